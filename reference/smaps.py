"""The `smaps` op: /proc/self/smaps of every VMA overlapping the range.

show_smap -> smap_gather_stats walks the VMA's page tables (smaps_pte_entry, 7.2
fs/proc/task_mmu.c) and changes nothing. Per populated entry:

- a present PTE of a normal page (not the zero page: vm_normal_page() returns NULL for
  it) and a device-private entry ("fake-present") go through smaps_account with
  present = true: Rss and Anonymous (every folio here is anonymous, device folios too:
  migrate_vma_insert_page / __folio_migrate_mapping give them the anon mapping). A folio
  with refcount 1 is private; otherwise folio_precise_page_mapcount decides: mapped twice
  or more it is shared and its Pss is PAGE_SIZE / mapcount (integer division in
  PSS_SHIFT fixed point), else private. For an order-0 folio both say "private iff
  mapcount < 2".
- a device-exclusive entry has a pfn (softleaf_has_pfn) but is not present: smaps_account
  counts it with present = false, "maybe shared, but not sure how often": shared, full
  Pss (6.12 too; 6.1 counts it private, profile.smaps_exclusive_entry_private).
- a swap entry: Swap += PAGE_SIZE and SwapPss += PAGE_SIZE / swp_swapcount (the slot's
  references, the model's slot mapcount) when shared by two or more.
- pte_none: nothing (smaps_pte_hole only looks at shmem).

Locked is the Pss of the pages of a VM_LOCKED VMA (pss_locked).

THPs (7.2; smaps_pmd_entry for a PMD mapping): a PMD-mapped THP adds 2 MiB to
AnonHugePages and is accounted page by page as above (smaps_account with compound: a
folio_ref_count of 1 means one PMD maps it, private; otherwise each page's
folio_precise_page_mapcount decides, which is the model's per-page mapcount). The huge
zero PMD counts nowhere (vm_normal_page_pmd: NULL), as the small zero page. A device THP's
PMD is not present: smaps_pmd_entry takes its page from the entry (softleaf_to_page), adds
2 MiB to AnonHugePages (the device folio is anonymous: folio_test_anon comes before
folio_is_zone_device) and calls smaps_account with present = false: shared, full Pss --
unlike a device-private PTE, which is "fake-present". PTE-mapped pages of a THP or of a
device THP count as order-0 pages do.

Not stated: Referenced (pte_young, folio_test_referenced: the model does not follow the
accessed bits the MMU sets) and the split of Shared/Private into Clean and Dirty
(pte_dirty || folio_test_dirty: the model does not follow the dirty bits either). For
those the model states Shared_Clean + Shared_Dirty and Private_Clean + Private_Dirty,
and 0 <= Referenced <= Rss.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.prog import PAGE_SIZE
from harness.prog.observation import SMAPS_FIELDS, SmapsVma

from .expect import Expect
from .places import Places
from .state import Kind, Mm, Vma, World
from .thp import PMD_PAGES, pmd_of
from .uffd_shmem import has_marker

PSS_SHIFT = 12
KB = 1024
FULL_PSS = PAGE_SIZE << PSS_SHIFT

# The fields stated exactly; the rest is stated through SmapsSpec's sums and bound.
EXACT_FIELDS = ("Rss", "Pss", "Anonymous", "AnonHugePages", "Swap", "SwapPss", "Locked")


@dataclass(frozen=True)
class SmapsSpec:
    """What one VMA record of a `smaps` op may be: bounds (addresses), the exact fields in
    kB, and the sums the model states where it does not follow dirty bits."""

    start: int
    end: int
    exact: tuple[tuple[str, int], ...]
    shared_kb: int      # Shared_Clean + Shared_Dirty
    private_kb: int     # Private_Clean + Private_Dirty

    def example(self) -> SmapsVma:
        """One record this spec allows: every page dirty and referenced."""
        fields = dict(self.exact, Shared_Clean=0, Shared_Dirty=self.shared_kb,
                      Private_Clean=0, Private_Dirty=self.private_kb,
                      Referenced=dict(self.exact)["Rss"])
        return SmapsVma(self.start, self.end,
                        tuple((name, fields[name]) for name in SMAPS_FIELDS))

    def __str__(self) -> str:
        values = " ".join(f"{name}={kb}" for name, kb in self.exact if kb)
        return (f"{self.start:#x}-{self.end:#x} {values or 'empty'} "
                f"Shared_*={self.shared_kb} Private_*={self.private_kb}")


@dataclass
class _Stats:
    """mem_size_stats, in bytes (Pss-like sums in PSS_SHIFT fixed point)."""

    resident: int = 0
    anonymous: int = 0
    shared: int = 0
    private: int = 0
    swap: int = 0
    pss: int = 0
    pss_locked: int = 0
    swap_pss: int = 0
    anonymous_thp: int = 0

    def account(self, pss: int, private: bool, locked: bool, anonymous: bool = True) -> None:
        """smaps_account + smaps_page_accumulate of one order-0 page (folio_test_anon: a
        page-cache folio of a shmem object is not anonymous)."""
        self.resident += PAGE_SIZE
        if anonymous:
            self.anonymous += PAGE_SIZE
        self.pss += pss
        if locked:
            self.pss_locked += pss
        if private:
            self.private += PAGE_SIZE
        else:
            self.shared += PAGE_SIZE

    def spec(self, vma: Vma) -> SmapsSpec:
        exact = {"Rss": self.resident // KB, "Pss": (self.pss >> PSS_SHIFT) // KB,
                 "Anonymous": self.anonymous // KB, "AnonHugePages": self.anonymous_thp // KB,
                 "Swap": self.swap // KB, "SwapPss": (self.swap_pss >> PSS_SHIFT) // KB,
                 "Locked": (self.pss_locked >> PSS_SHIFT) // KB}
        return SmapsSpec(vma.start * PAGE_SIZE, vma.end * PAGE_SIZE,
                         tuple((name, exact[name]) for name in EXACT_FIELDS),
                         self.shared // KB, self.private // KB)


def _shared_pss(mapcount: int) -> int:
    return FULL_PSS // mapcount if mapcount >= 2 else FULL_PSS


def vma_stats(world: World, mm: Mm, vma: Vma) -> SmapsSpec:
    """smap_gather_stats of one VMA: smaps_pte_entry over each populated PTE."""
    stats = _Stats()
    locked = "locked" in vma.flags
    for index, pmd in mm.pmds.items():
        if not pmd.zero and index * PMD_PAGES in vma:
            stats.anonymous_thp += PMD_PAGES * PAGE_SIZE   # smaps_pmd_entry
    for vpn, pte in mm.ptes.items():
        if vpn not in vma or pte.kind is Kind.ZERO:
            continue
        folio = world.folios[pte.folio]
        if pte.kind is Kind.SWAP:
            stats.swap += PAGE_SIZE
            stats.swap_pss += _shared_pss(folio.mapcount)
        elif pte.kind is Kind.DEVICE and _under_device_pmd(mm, vpn):
            stats.account(FULL_PSS, False, locked)   # smaps_pmd_entry: present = false
        elif pte.kind is Kind.EXCLUSIVE:
            private = world.profile.smaps_exclusive_entry_private
            stats.account(FULL_PSS, private, locked)
        else:  # present, or device-private ("fake-present")
            # A mapped page-cache folio has the page cache's reference besides the
            # mapping's, so folio_ref_count() == 1 never decides: the mapcount does, as
            # for an anonymous folio mapped more than once.
            stats.account(_shared_pss(folio.mapcount), folio.mapcount < 2, locked,
                          anonymous=not folio.page_cache)
    if vma.obj is not None:
        stats.swap += object_swap_pages(world, mm, vma) * PAGE_SIZE
    return stats.spec(vma)


def _under_device_pmd(mm: Mm, vpn: int) -> bool:
    pmd = mm.pmds.get(pmd_of(vpn))
    return pmd is not None and pmd.device


def object_swap_pages(world: World, mm: Mm, vma: Vma) -> int:
    """smap_gather_stats of a shmem VMA: the object's pages in swap (shmem_swap_usage: the
    swap entries of the mapping in [vm_pgoff, vm_pgoff + vma_pages), or info->swapped when
    the VMA maps the object whole: the same number). Counted in Swap only, never in
    SwapPss. A shared or read-only VMA counts them all, whatever its PTEs; a private
    writable one with some of them walks with smaps_shmem_walk_ops and counts only those
    at a pte_none (smaps_pte_hole / smaps_pte_hole_lookup): a present, swap or uffd-wp
    marker PTE (an anonymous copy, or nothing but the marker) hides the object's page.
    The same code in 6.1, 6.12 and 7.2."""
    pages = world.objects[vma.obj]
    swapped = [vpn for vpn in range(vma.start, vma.end)
               if (folio := world.folios.get(pages.get(vpn + vma.shift))) is not None
               and folio.swapped]
    if vma.shared or not vma.prot.writable:
        return len(swapped)
    return sum(1 for vpn in swapped if vpn not in mm.ptes and not has_marker(mm, vpn))


def smaps(world: World, op, places: Places) -> list[tuple[Expect, World]]:
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    specs = tuple(vma_stats(world, mm, vma) for vma in mm.vmas
                  if vma.start < end and start < vma.end)
    return [(Expect(smaps=specs, why={
        "errno": "reading /proc/self/smaps succeeds",
        "smaps": "show_smap -> smap_gather_stats -> smaps_pte_entry (fs/proc/task_mmu.c)"}),
        world)]


def compare(specs, seen) -> list[tuple[str, tuple[str, ...], str, str]]:
    """Mismatches of a smaps observation (see check.mismatches)."""
    reason = "smap_gather_stats (fs/proc/task_mmu.c), see reference/smaps.py"
    if specs is None or seen is None:
        if specs is seen:
            return []
        return [("smaps", ("not reported" if specs is None else f"{len(specs)} VMAs",),
                 "not reported" if seen is None else f"{len(seen)} VMAs",
                 "only a smaps op reports smaps records")]
    if [(s.start, s.end) for s in specs] != [(v.start, v.end) for v in seen]:
        return [("smaps", (" ".join(f"{s.start:#x}-{s.end:#x}" for s in specs) or "no VMA",),
                 " ".join(f"{v.start:#x}-{v.end:#x}" for v in seen) or "no VMA",
                 "the VMAs overlapping the range, as the model has them")]
    found = []
    for i, (spec, got) in enumerate(zip(specs, seen)):
        problems = _problems(spec, dict(got.fields))
        if problems:
            found.append((f"smaps[{i}]", (str(spec),), f"{got} ({'; '.join(problems)})",
                          reason))
    return found


def _problems(spec: SmapsSpec, fields: dict[str, int]) -> list[str]:
    problems = [f"{name} {fields.get(name)}, stated {kb}" for name, kb in spec.exact
                if fields.get(name) != kb]
    for kind, stated in (("Shared", spec.shared_kb), ("Private", spec.private_kb)):
        clean, dirty = fields.get(f"{kind}_Clean"), fields.get(f"{kind}_Dirty")
        if clean is None or dirty is None or clean + dirty != stated:
            problems.append(f"{kind}_Clean + {kind}_Dirty = {clean} + {dirty}, "
                            f"stated {stated}")
    rss, referenced = dict(spec.exact)["Rss"], fields.get("Referenced")
    if referenced is None or not 0 <= referenced <= rss:
        problems.append(f"Referenced {referenced}, stated between 0 and Rss {rss}")
    return problems
