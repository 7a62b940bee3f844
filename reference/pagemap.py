"""The `pagemap` op: /proc/self/pagemap, /proc/kpagecount and /proc/kpageflags per page.

pagemap_read (fs/proc/task_mmu.c, 7.2): pagemap_pte_hole for pages without a PTE,
pte_to_pagemap_entry for the others. What the model states, per page:

- bits 55..63 exactly: PM_SOFT_DIRTY where the VMA has VM_SOFTDIRTY (__mmap_region sets
  it, only clear_soft_dirty clears it) or the PTE has its soft-dirty bit (both functions
  add the VMA's flag); pages outside any VMA read 0. PM_PRESENT for a present PTE; PM_SWAP
  for a non-present one (swap, device-exclusive and device-private entries); PM_MMAP_EXCLUSIVE for a
  present normal page mapped exactly once (__folio_page_mapped_exclusively: not for the zero
  page, which vm_normal_page() does not return; 6.1 also sets it for a device-private entry
  of a page mapped once, profile.pagemap_swap_exclusive); PM_FILE for a page-cache folio of a
  shmem object (shmem.py), which also has no KPF_ANON.
- the frame: 0 for pte_none; for a present page its PFN, which the kernel chooses, so it is
  compared structurally: the zero page has one PFN, a folio keeps its PFN from op to op
  (the model's ops do not move folios; compaction is off), and within one op two different
  folios never share a PFN. A softleaf entry holds swp_type | offset << 5, where the type is
  the kernel's constant for the entry kind (profile) and the offset the PFN of the page
  (device-exclusive: the folio's own PFN, the one it showed while present).
- kpagecount (only for present pages with a PFN): the page's mapcount; 0 for the zero page
  and for a device-coherent page (no online page at a ZONE_DEVICE PFN: kpageflags 0 too).
- kpageflags: only KPF_ANON, KPF_ZERO_PAGE, KPF_KSM (a KSM folio, ksm.py; every anonymous
  page on 6.12, profile.kpf_ksm_on_every_anon_page) and bit 34 (KPF_OWNER_2, which shows
  PG_owner_2 = PG_anon_exclusive: PageAnonExclusive) are compared; LRU, ACTIVE, REFERENCED, DIRTY,
  MLOCKED and the like depend on per-CPU batches and reclaim and are not stated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.prog.observation import PagemapEntry
from harness.prog.observation import (
    KPF, PM_FILE, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP,
)

from .expect import Expect
from .places import Places
from .refuse import Unmodelled
from .state import Kind, World
from .uffd_shmem import PTE_MARKER_UFFD_WP

FLAG_BITS = ((1 << 64) - 1) & ~((1 << 55) - 1)     # bits 55..63
SWP_TYPE_BITS = 5                                   # MAX_SWAPFILES_SHIFT
KPF_ANON_EXCLUSIVE = 1 << 34                        # KPF_OWNER_2 (PG_anon_exclusive)
KPF_STATED = (KPF["ANON"] | KPF["ZERO_PAGE"] | KPF_ANON_EXCLUSIVE | KPF["THP"]
              | KPF["COMPOUND_HEAD"] | KPF["COMPOUND_TAIL"] | KPF["KSM"])
SWAP_TYPE = 0    # the runner's only swap device (zram0, swapon at boot) is swap type 0
ZERO_KEY = ("zero",)
HUGE_ZERO_KEY = ("hzero",)
THP_PAGES = 512  # the pages of a PMD-sized folio: its PFNs are the head's plus 0..511
LARGE_KEYS = ("thp", "devthp")   # keys of PMD-sized folios: system memory, device memory


@dataclass(frozen=True)
class PageSpec:
    """What one pagemap record may be. `frame`: "none", "pfn" (present page of `key`),
    "swp" (type `swp_type`, offset the PFN of `key`) or "marker" (type `swp_type`, offset
    PTE_MARKER_UFFD_WP). `known`: the PFN of `key` learned from
    an earlier pagemap op, if any."""

    flags: int
    frame: str = "none"
    key: tuple | None = None
    swp_type: int = 0
    known: int | None = None
    taken: frozenset = frozenset()   # PFNs other live pages showed: not this page's
    # The page's index in a PMD-sized folio (key "thp" or the huge zero page): its PFN is
    # the folio's (the head page's, which `known` holds) plus this.
    offset: int = 0
    count: int | None = None
    kflags: int | None = None
    why: str = ""

    def __str__(self) -> str:
        bits = [name for name, bit in (("present", PM_PRESENT), ("swapped", PM_SWAP),
                                       ("exclusive", PM_MMAP_EXCLUSIVE),
                                       ("uffd_wp", PM_UFFD_WP),
                                       ("soft_dirty", PM_SOFT_DIRTY), ("file", PM_FILE))
                if self.flags & bit]
        text = "|".join(bits) or "none"
        if self.frame == "pfn":
            text += f" pfn of {_key_name(self.key)}"
            if self.offset:
                text += f" + {self.offset}"
        elif self.frame == "marker":
            text += f" swap type {self.swp_type} offset PTE_MARKER_UFFD_WP"
        elif self.frame == "swp":
            text += f" swap type {self.swp_type} offset pfn of {_key_name(self.key)}"
            if self.offset:
                text += f" + {self.offset}"
        if self.count is not None:
            text += f" count={self.count} flags&stated={self.kflags:#x}"
        return text


def _key_name(key) -> str:
    if key == ZERO_KEY:
        return "the zero page"
    if key == HUGE_ZERO_KEY:
        return "the huge zero page"
    kind, folio = key
    if kind == "thp":
        return f"THP #{folio}"
    if kind == "devthp":
        return f"device THP #{folio}"
    return f"{ {'dev': 'device folio', 'swap': 'swap slot'}.get(kind, 'folio')} #{folio}"


def pagemap(world: World, op, places: Places) -> list[tuple[Expect, World]]:
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    profile = world.profile
    heads = {f.thp for f in world.folios.values() if f.thp is not None}
    live = {key: pfn for key, pfn in world.pfns.items()
            if key in (ZERO_KEY, HUGE_ZERO_KEY) or key[1] in world.folios
            or (key[0] in LARGE_KEYS and key[1] in heads)}
    specs = []
    head_bits: dict = {}    # THP head -> its PG_anon_exclusive, once worked out
    for vpn in range(start, end):
        name = places.name(vpn)
        vma = mm.vma_at(vpn)
        if vma is None:
            specs.append(PageSpec(0, why=f"{name} has no VMA: pagemap_pte_hole, no flags"))
            continue
        pte = mm.ptes.get(vpn)
        vma_sd = PM_SOFT_DIRTY if vma.softdirty else 0
        if pte is None and vpn in mm.markers:
            # pte_to_pagemap_entry: a softleaf entry (PM_SWAP) that is a uffd-wp marker
            # (PM_UFFD_WP); swp_type SWP_PTE_MARKER, offset PTE_MARKER_UFFD_WP
            specs.append(PageSpec(PM_SWAP | PM_UFFD_WP | vma_sd, "marker",
                                  swp_type=profile.swp_pte_marker,
                                  why=f"{name} holds a uffd-wp PTE marker (uffd_shmem.py)"))
            continue
        if pte is None:
            specs.append(PageSpec(vma_sd, why=f"{name} is pte_none: pagemap_pte_hole with "
                                              f"the VMA's VM_SOFTDIRTY ({vma.softdirty})"))
            continue
        sd = PM_SOFT_DIRTY if vma.softdirty or pte.soft_dirty else 0
        if pte.uffd_wp:
            sd |= PM_UFFD_WP   # pte_uffd_wp / pte_swp_uffd_wp, whatever the VMA
        huge = thp_spec(world, mm, vpn, pte, sd, name, head_bits)
        if huge is not None:
            specs.append(huge)
            continue
        if pte.kind is Kind.ZERO:
            specs.append(PageSpec(PM_PRESENT | sd, "pfn", ZERO_KEY,
                                  known=world.pfns.get(ZERO_KEY), count=0,
                                  kflags=KPF["ZERO_PAGE"],
                                  why=f"{name} maps the zero page"))
            continue
        folio = world.folios[pte.folio]
        if pte.kind is Kind.PRESENT and folio.page_cache:
            key = ("pfn", pte.folio)
            # pte_to_pagemap_entry: PM_FILE for a folio that is not anonymous
            flags = PM_PRESENT | PM_FILE | sd
            if folio.mapcount == 1:
                flags |= PM_MMAP_EXCLUSIVE
            specs.append(PageSpec(flags, "pfn", key, known=world.pfns.get(key),
                                  count=folio.mapcount, kflags=0,
                                  why=f"{name} maps a shmem page-cache folio mapped "
                                      f"{folio.mapcount} time(s)"))
            continue
        if pte.kind is Kind.PRESENT and folio.device is not None:
            key = ("pfn", pte.folio)
            flags = PM_PRESENT | sd
            if folio.mapcount == 1:
                flags |= PM_MMAP_EXCLUSIVE
            # kpage_read: pfn_to_online_page() is NULL for a ZONE_DEVICE PFN ("The presence
            # of a pgmap indicates ZONE_DEVICE offline pfn"), which reads 0 for both files.
            specs.append(PageSpec(flags, "pfn", key, known=world.pfns.get(key), count=0,
                                  kflags=0,
                                  why=f"{name} maps a device-coherent page of {folio.device} "
                                      f"mapped {folio.mapcount} time(s); kpagecount and "
                                      "kpageflags find no online page at its PFN"))
            continue
        if pte.kind is Kind.PRESENT:
            key = ("pfn", pte.folio)
            flags = PM_PRESENT | sd
            if folio.mapcount == 1:
                flags |= PM_MMAP_EXCLUSIVE
            specs.append(PageSpec(flags, "pfn", key, known=world.pfns.get(key),
                                  count=folio.mapcount,
                                  kflags=_anon_kflags(folio, profile),
                                  why=f"{name} maps {'a KSM' if folio.ksm else 'an anonymous'}"
                                      " folio mapped "
                                      f"{folio.mapcount} time(s)"
                                      f"{', PageAnonExclusive' if folio.exclusive else ''}"))
            continue
        flags = PM_SWAP | sd
        if pte.kind is Kind.SWAP:
            specs.append(PageSpec(flags, "swp", ("swap", pte.folio), SWAP_TYPE,
                                  known=world.pfns.get(("swap", pte.folio)),
                                  why=f"{name} is swapped out: a swap entry of the zram "
                                      "device (type 0), its offset the slot"))
            continue
        offset = 0
        if pte.kind is Kind.EXCLUSIVE:
            key = ("pfn", pte.folio)
            if folio.thp is not None:     # a page of a THP: its PFN is the head's + index
                key, offset = ("thp", folio.thp), folio.thp_index
            swp_type = profile.swp_device_exclusive
            if profile.exclusive_entry_permission and not pte.writable:
                swp_type += 1  # SWP_DEVICE_EXCLUSIVE_READ follows _WRITE
            why = f"{name} is a device-exclusive entry"
        else:
            key = ("dev", pte.folio)
            if folio.thp is not None:
                # a page of a device THP (by its PMD: pagemap_pmd_range_thp, the entry's
                # PFN + the page's index; by a PTE after a split: its own PFN, the same)
                key, offset = ("devthp", folio.thp), folio.thp_index
            swp_type = profile.swp_device_write if pte.writable else profile.swp_device_read
            if profile.pagemap_swap_exclusive and folio.mapcount == 1:
                flags |= PM_MMAP_EXCLUSIVE
            why = f"{name} is a {'writable' if pte.writable else 'readable'} device-private entry"
        specs.append(PageSpec(flags, "swp", key, swp_type, known=world.pfns.get(key),
                              offset=offset, why=why))
    specs = [replace(spec, taken=_taken(live, spec.key)) if spec.key else spec
             for spec in specs]
    return [(Expect(pagemap=tuple(specs), why={
        "errno": "reading /proc/self/pagemap of the range succeeds",
        "pagemap": "pagemap_read (fs/proc/task_mmu.c)"}), world)]


def _anon_kflags(folio, profile) -> int:
    """The stated kpageflags of a present anonymous folio (stable_page_flags)."""
    ksm = folio.ksm or profile.kpf_ksm_on_every_anon_page
    return (KPF["ANON"] | (KPF_ANON_EXCLUSIVE if folio.exclusive else 0)
            | (KPF["KSM"] if ksm else 0))


def _compound(index: int) -> int:
    # stable_page_flags: KPF_COMPOUND_HEAD for the first page of a compound page (PG_head),
    # KPF_COMPOUND_TAIL for every other one.
    return KPF["COMPOUND_HEAD"] if index == 0 else KPF["COMPOUND_TAIL"]


def thp_spec(world: World, mm, vpn: int, pte, sd: int, name: str,
             head_bits: dict) -> PageSpec | None:
    """The record of a page of a PMD mapping or of a THP (PMD- or PTE-mapped), or None.

    The huge zero page (pagemap_pmd_range_thp): PM_PRESENT, and PM_FILE because its folio
    is not anonymous (folio_test_anon); kpagecount 0 (no rmap), so no PM_MMAP_EXCLUSIVE;
    kpageflags ZERO_PAGE and THP (is_huge_zero_pfn), compound head or tail, no ANON. A THP
    page: KPF_THP (large and rmappable), compound head or tail, ANON, and PG_anon_exclusive
    of the folio's flags; kpagecount from the precise page mapcount (_mapcount + the entire
    mapcount: 1 when mapped by one PMD or one PTE), PM_MMAP_EXCLUSIVE too, but for a PMD
    mapping from the head page's (so after fork and a COW copy of the head page in the
    other process, every page of this PMD loses the bit)."""
    index = vpn // THP_PAGES
    pmd = mm.pmds.get(index)
    if pte.kind is Kind.ZERO and pmd is not None and pmd.zero:
        offset = vpn % THP_PAGES
        return PageSpec(PM_PRESENT | PM_FILE | sd, "pfn", HUGE_ZERO_KEY,
                        known=world.pfns.get(HUGE_ZERO_KEY), offset=offset, count=0,
                        kflags=KPF["ZERO_PAGE"] | KPF["THP"] | _compound(offset),
                        why=f"{name} maps the huge zero page (page {offset})")
    if pte.kind is not Kind.PRESENT:
        return None
    folio = world.folios[pte.folio]
    if folio.thp is None:
        return None
    key = ("thp", folio.thp)
    # pagemap_pmd_range_thp asks __folio_page_mapped_exclusively(folio, page) with page =
    # pmd_page(), the head page, for all 512 records; pte_to_pagemap_entry asks of the page.
    asked = folio
    if index in mm.pmds:
        asked = world.folios[mm.ptes[index * THP_PAGES].folio]
    flags = PM_PRESENT | sd | (PM_MMAP_EXCLUSIVE if asked.mapcount == 1 else 0)
    how = "a PMD" if index in mm.pmds else "a PTE"
    return PageSpec(flags, "pfn", key, known=world.pfns.get(key), offset=folio.thp_index,
                    count=folio.mapcount,
                    kflags=KPF["ANON"] | KPF["THP"] | _compound(folio.thp_index)
                    | (KPF_ANON_EXCLUSIVE if _head_exclusive(world, folio.thp, head_bits) else 0),
                    why=f"{name} is page {folio.thp_index} of THP #{folio.thp}, mapped by "
                        f"{how}, {folio.mapcount} time(s)"
                        f"{', PageAnonExclusive' if folio.exclusive else ''}")


def _head_exclusive(world: World, head: int, known: dict) -> bool:
    """PG_anon_exclusive of a THP's head page, which stable_page_flags shows for every page
    (it reads folio->flags). An unmapped head keeps the bit it had when it was unmapped: set,
    if every page still mapped is PageAnonExclusive (a fork while the head was mapped would
    have cleared theirs too, and only a reuse of the whole PMD, the head included, sets them
    again); otherwise unknown (a fork after the head went leaves it set), refused."""
    folio = world.folios.get(head)
    if folio is not None:
        return folio.exclusive
    if head in known:
        return known[head]
    from .thp_split import pages_of
    if all(world.folios[page].exclusive for _, _, page in pages_of(world, head)):
        known[head] = True
        return True
    raise Unmodelled("pagemap of a THP whose head page is unmapped, after a fork",
                     "kpageflags shows the head page's PG_anon_exclusive")


def _space(key) -> str:
    """Which numbers a key's frame is drawn from: device PFNs, swap slots or system PFNs."""
    return {"devthp": "dev"}.get(key[0], key[0]) if key[0] in ("dev", "devthp", "swap") \
        else "pfn"


def _taken(live: dict, key) -> frozenset:
    """The PFNs (swap offsets) that other pages still alive showed in the same space
    (device memory, swap slots or system memory): a page cannot have one of them now."""
    space = _space(key)
    taken = set()
    for other, pfn in live.items():
        if other != key and _space(other) == space:
            if other == HUGE_ZERO_KEY or other[0] in LARGE_KEYS:
                taken.update(range(pfn, pfn + THP_PAGES))
            else:
                taken.add(pfn)
    return frozenset(taken)


def _frame(spec: PageSpec, entry: int) -> int | None:
    """The PFN the entry shows for spec.key, or None if the entry's frame does not have the
    stated shape."""
    frame = entry & ((1 << 55) - 1)
    if spec.frame == "none":
        return None if frame else 0
    if spec.frame == "pfn":
        return frame or None
    if spec.frame == "marker":
        expected = spec.swp_type | PTE_MARKER_UFFD_WP << SWP_TYPE_BITS
        return 0 if frame == expected else None
    if frame & ((1 << SWP_TYPE_BITS) - 1) != spec.swp_type:
        return None
    return frame >> SWP_TYPE_BITS


def compare(specs, seen) -> list[tuple[str, tuple[str, ...], str, str]]:
    """Mismatches of a pagemap observation (see check.mismatches)."""
    if specs is None or seen is None:
        if specs is seen:
            return []
        return [("pagemap", (f"{len(specs)} records" if specs else "not reported",),
                 f"{len(seen)} records" if seen else "not reported",
                 "only a pagemap op reports pagemap records")]
    if len(specs) != len(seen):
        return [("pagemap", (f"{len(specs)} records",), f"{len(seen)} records",
                 "one record per page of the range")]
    found = []
    by_key: dict = {}
    by_pfn: dict = {}
    for i, (spec, got) in enumerate(zip(specs, seen)):
        field = f"pagemap[{i}]"
        problems = []
        if got.entry & FLAG_BITS != spec.flags:
            problems.append(f"flag bits {(got.entry & FLAG_BITS) >> 55:#x}, "
                            f"stated {spec.flags >> 55:#x}")
        pfn = _frame(spec, got.entry)
        if pfn is None:
            problems.append(f"frame {got.entry & ((1 << 55) - 1):#x} has not the stated shape")
        elif spec.key is not None:
            base = pfn - spec.offset
            if pfn in spec.taken:
                problems.append(f"PFN {pfn:#x} belongs to another page still mapped")
            if spec.known is not None and base != spec.known:
                problems.append(f"PFN {pfn:#x}, but {_key_name(spec.key)} showed "
                                f"{spec.known:#x}{_plus(spec.offset)} before")
            if by_key.setdefault(spec.key, base) != base:
                problems.append(f"PFN {pfn:#x}, but {_key_name(spec.key)} shows "
                                f"{by_key[spec.key]:#x}{_plus(spec.offset)} on another page")
            other = by_pfn.setdefault((_space(spec.key), pfn), spec.key)
            if other != spec.key:
                problems.append(f"PFN {pfn:#x} is also {_key_name(other)}'s")
        if spec.count is not None:
            if got.count != spec.count:
                problems.append(f"kpagecount {got.count}, stated {spec.count}")
            if got.flags is None or got.flags & KPF_STATED != spec.kflags:
                shown = None if got.flags is None else hex(got.flags & KPF_STATED)
                problems.append(f"kpageflags ANON/ZERO_PAGE/KSM/ANON_EXCLUSIVE/THP/COMPOUND {shown}, "
                                f"stated {spec.kflags:#x}")
        elif got.count is not None:
            problems.append("kpagecount reported for a page the model has no PFN for")
        if problems:
            found.append((field, (str(spec),), f"{got} ({'; '.join(problems)})", spec.why))
    return found


def _plus(offset: int) -> str:
    return f" + {offset}" if offset else ""


def learn(world: World, specs, seen: tuple[PagemapEntry, ...]) -> None:
    for spec, got in zip(specs, seen):
        if spec.key is not None:
            pfn = _frame(spec, got.entry)
            if pfn is not None:
                world.pfns[spec.key] = pfn - spec.offset
