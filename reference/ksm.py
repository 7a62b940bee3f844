"""KSM (mm/ksm.c): the `ksm_merge` op, `madvise mergeable/unmergeable`, KSM folios.

Read in 7.2; 6.12 and 6.1 scan, merge and break KSM pages the same way, except that 6.1
breaks them with a write fault (profile.ksm_unmerge_write_fault). 6.1 also searches the
stable tree before the checksum test, which changes nothing after two full scans.

The runner's `ksm_merge` starts ksmd with pages_to_scan 100000, sleep_millisecs 0 and
smart_scan off, waits until /sys/kernel/mm/ksm/full_scans advanced by 3 (or did not advance
for 3 s), then stops it (run=0): the merged pages stay merged. Every program starts with
KSM emptied (run=2: unmerge_and_remove_all_rmap_items) and the cursor at the list head.

What a scan merges (scan_get_next_rmap_item, cmp_and_merge_page). ksmd walks the mms that
have an mm_slot (World.ksm_slots), in each the VMAs with VM_MERGEABLE and an anon_vma,
and in those every present PTE of an anonymous, non-device folio
(ksm_next_page_pmd_entry: pte_present, vm_normal_page, !folio_is_zone_device,
folio_test_anon): the zero page, pte_none, swap, device-private and device-exclusive
entries are not candidates; a PROT_NONE PTE is (pte_present). For a page that is not a
KSM page the checksum must not have changed since the page's last visit (the rmap_item's
oldchecksum), so a page is merged at the earliest on its second visit; then
stable_tree_search looks for a KSM page of the same content (merge into it:
write_protect_page + replace_page) and else unstable_tree_search_insert for a page seen
earlier in this scan (merge the two: the current page becomes the KSM page, the tree page
is replaced by it). Each full scan starts with lru_add_drain_all(), and no op leaves an
extra reference on a folio, so write_protect_page's `mapcount + 1 + swapped == refcount`
check passes. The op's scans include two complete full scans during which nothing changes
the pages: the first records every page's checksum, the second merges. So by the end:

- every candidate mapping of a content that has a KSM page, or that two different folios
  hold, maps one KSM folio of that content (one per content: stable_tree_search comes
  first, max_page_sharing's duplicates apart, which the model refuses past 256 mappings);
  a folio alone with its content stays as it is (unstable_tree_search_insert: "Don't
  substitute a ksm page for a forked page" when it meets its own other mapping).
- which of the merging folios becomes the KSM folio (its PFN and node) depends on the scan
  order (where the cursor stood, the mm_slot list order): the model makes a new folio
  whose PFN is not known and whose node is known only if all candidates were on one node.
- every mapping that changed folio got MMU_NOTIFY_CLEAR over its page (write_protect_page
  and replace_page): each dmirror of the mm loses it and, by the driver's quirk, the next
  page. A KSM page found in a fork child (no rmap_item yet) is only appended to the stable
  node (try_to_merge_one_page: "ksm page forked"), with no notifier.
- the merged PTEs are read-only and clean (write_protect_page: pte_wrprotect,
  pte_mkclean); replace_page maps the KSM page with mk_pte(kpage, vm_page_prot): no
  soft-dirty bit. PageAnonExclusive is cleared (folio_try_share_anon_rmap_pte).

Refused: a merge that would have to decide between folios mapped several times (after
fork: which of its mappings merge within the scans depends on the scan order), a lazyfree
folio that might become the KSM folio, a soft-dirty bit whose survival depends on which
page becomes the KSM page, more than 256 mappings of one content (max_page_sharing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.prog import Content

from . import vma as vmas
from .expect import Expect, done
from .places import Places
from .refuse import Unmodelled
from .state import Folio, Kind, Mm, Pte, World

MAX_PAGE_SHARING = 256     # /sys/kernel/mm/ksm/max_page_sharing, default
FULL_SCANS_WAITED = 3      # KSM_FULL_SCANS in harness/runner/kernel_ops.h


# ------------------------------------------------------------------ what ksm_merge reports

@dataclass(frozen=True)
class KsmSpec:
    """What a `ksm_merge` op may report: full_scans within [min_scans, max_scans] (None: no
    upper bound), and /sys/kernel/mm/ksm/pages_shared and pages_sharing exactly."""

    min_scans: int
    max_scans: int | None
    pages_shared: int
    pages_sharing: int

    def __str__(self) -> str:
        scans = (f"full_scans>={self.min_scans}" if self.max_scans is None else
                 f"full_scans={self.min_scans}" if self.min_scans == self.max_scans else
                 f"full_scans in {self.min_scans}..{self.max_scans}")
        return f"{scans} pages_shared={self.pages_shared} pages_sharing={self.pages_sharing}"


def compare(spec: KsmSpec | None, seen, why: str) -> list[tuple[str, tuple[str, ...], str, str]]:
    """Mismatches of a ksm_merge observation (see check.mismatches)."""
    if spec is None:
        return []  # only a ksm_merge op states its counters
    if seen is None:
        return [("ksm", (str(spec),), "not reported", why)]
    scans_ok = spec.min_scans <= seen.full_scans and (
        spec.max_scans is None or seen.full_scans <= spec.max_scans)
    if scans_ok and (seen.pages_shared, seen.pages_sharing) == (spec.pages_shared,
                                                                 spec.pages_sharing):
        return []
    observed = (f"full_scans={seen.full_scans} pages_shared={seen.pages_shared} "
                f"pages_sharing={seen.pages_sharing}")
    return [("ksm", (str(spec),), observed, why)]


# ------------------------------------------------------------------ registration

def madvise_mergeable(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """ksm_madvise(MADV_MERGEABLE) for each VMA of the range: a VMA without VM_MERGEABLE
    registers the mm with __ksm_enter (if MMF_VM_MERGEABLE is not set yet); every private
    VMA is ksm_compatible, a VM_SHARED one is not ("Just ignore the advice")."""
    if any("mergeable" not in vma.flags and not vma.shared
           for vma in vmas.overlaps(mm, start, end)):
        world.ksm_slots = world.ksm_slots | {mm_id}


def fork(world: World, parent: int, child: int) -> None:
    """dup_mmap -> ksm_fork: a child of a registered mm gets its own mm_slot."""
    if parent in world.ksm_slots:
        world.ksm_slots = world.ksm_slots | {child}


# ------------------------------------------------------------------ breaking KSM pages

def unmerge(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """ksm_madvise(MADV_UNMERGEABLE) over [start, end) (madvise unmergeable; mremap's
    prep_move_vma over the moved range): in each VMA with VM_MERGEABLE and an anon_vma,
    break_ksm() takes an unshare fault (FAULT_FLAG_UNSHARE) on every KSM page."""
    from .mm import invalidate

    for vma in vmas.overlaps(mm, start, end):
        if "mergeable" not in vma.flags or vma.anon is None:
            continue
        for vpn in range(max(start, vma.start), min(end, vma.end)):
            pte = mm.ptes.get(vpn)
            if pte is None or pte.kind is not Kind.PRESENT or not world.folios[pte.folio].ksm:
                continue
            # do_wp_page: a KSM folio is never reused (wp_can_reuse_anon_folio) ->
            # wp_page_copy: MMU_NOTIFY_CLEAR over the page and a new exclusive folio, mapped
            # read-only for an unshare, with the old PTE's soft-dirty bit and no
            # pte_mkdirty; for 6.1's write fault maybe_mkwrite(pte_mkdirty()).
            invalidate(world, mm_id, vpn, vpn + 1)
            content = world.content(pte.folio)
            world.unmap_folio(pte.folio)
            copy = world.new_folio(content, vmas.alloc_node(vma))
            if world.profile.ksm_unmerge_write_fault:
                mm.ptes[vpn] = Pte(Kind.PRESENT, copy, vma.prot.writable)
            else:
                mm.ptes[vpn] = Pte(Kind.PRESENT, copy, False, clean=True,
                                   soft_dirty=pte.soft_dirty)


def refuse_ksm_pages(world: World, mm: Mm, start: int, end: int, what: str, why: str) -> None:
    """Refuse an op whose effect on a KSM page the model does not state."""
    for vpn in range(start, end):
        pte = mm.ptes.get(vpn)
        if pte is not None and pte.kind is Kind.PRESENT and world.folios[pte.folio].ksm:
            raise Unmodelled(what, why)


# ------------------------------------------------------------------ ksm_merge

@dataclass(frozen=True)
class _Mapping:
    mm_id: int
    vpn: int
    softdirty_vma: bool


def _content_key(content: Content) -> tuple:
    """Equal keys, equal bytes: every zero-filled page is alike whatever its vpn."""
    return ("zero",) if content.is_zero else (content.seed, content.vpn)


def _scanned_mms(world: World) -> list[int]:
    return sorted(mm_id for mm_id in world.ksm_slots
                  if world.mms[mm_id].alive
                  and any("mergeable" in vma.flags for vma in world.mms[mm_id].vmas))


def _candidates(world: World, scanned: list[int]) -> dict[tuple, list[_Mapping]]:
    """Candidate mappings by content, in scan order within each mm."""
    groups: dict[tuple, list[_Mapping]] = {}
    for mm_id in scanned:
        mm = world.mms[mm_id]
        for vma in mm.vmas:
            if "mergeable" not in vma.flags or vma.anon is None:
                continue
            for vpn in sorted(v for v in mm.ptes if vma.start <= v < vma.end):
                pte = mm.ptes[vpn]
                folio = world.folios.get(pte.folio) if pte.kind is Kind.PRESENT else None
                if folio is None or folio.page_cache or folio.device is not None:
                    # a page-cache folio of a private file mapping is not anon; ksmd skips
                    # device-coherent pages ("folio_is_zone_device(folio) ||
                    # !folio_test_anon(folio)" in ksm_next_page_pmd_entry)
                    continue
                key = _content_key(world.content(pte.folio))
                groups.setdefault(key, []).append(_Mapping(mm_id, vpn, vma.softdirty))
    return groups


def _full_scans(world: World, scanned: list[int]) -> tuple[int, int | None, str]:
    """ksmd runs while an mm_slot exists (ksmd_should_run); a scan that finds an mm
    without VM_MERGEABLE VMAs, or exited, removes its slot (scan_get_next_rmap_item)."""
    if scanned:
        return FULL_SCANS_WAITED, None, ("a live registered mm has VM_MERGEABLE VMAs: ksmd "
                                         "keeps scanning, the runner waits for 3 full scans")
    live = [m for m in world.ksm_slots if world.mms[m].alive]
    if live:
        return 1, 1, ("every registered mm lacks VM_MERGEABLE VMAs: one full scan removes "
                      "their slots (scan_get_next_rmap_item), then ksmd has nothing to do")
    if world.ksm_slots:
        return 0, 1, ("only exited mms were registered: __ksm_exit freed their slots at once "
                      "or left them to one full scan of ksmd")
    return 0, 0, "no mm was registered with KSM: ksmd_should_run() is false"


def ksm_merge(world: World, op, places: Places) -> list[tuple[Expect, World]]:
    if not world.profile.ksm_merge:
        raise Unmodelled("ksm_merge on this kernel", "KSM is modelled from 6.1, 6.12 and 7.2")
    scanned = _scanned_mms(world)
    min_scans, max_scans, scans_why = _full_scans(world, scanned)
    for mappings in _candidates(world, scanned).values():
        _merge_group(world, mappings)
    shared, sharing = _counters(world, scanned)
    world.ksm_slots = frozenset(scanned)
    spec = KsmSpec(min_scans, max_scans, shared, sharing)
    expect = done("ksm_merge: ksmd runs until the full scans are done")
    return [(replace(expect, ksm=spec, why={
        **expect.why, "ksm": f"{scans_why}; pages_shared counts the KSM pages, pages_sharing "
                             "their other mappings (stable_tree_append)"}), world)]


def _merge_group(world: World, mappings: list[_Mapping]) -> None:
    ptes = {(m.mm_id, m.vpn): world.mms[m.mm_id].ptes[m.vpn] for m in mappings}
    folio_ids = sorted({pte.folio for pte in ptes.values()})
    ksm_ids = [f for f in folio_ids if world.folios[f].ksm]
    normal = [f for f in folio_ids if not world.folios[f].ksm]
    if len(mappings) > MAX_PAGE_SHARING:
        raise Unmodelled("ksm_merge of more than 256 identical pages",
                         "max_page_sharing makes duplicate KSM pages")
    if len(ksm_ids) > 1:
        raise Unmodelled("ksm_merge with two KSM pages of the same content")
    if len(mappings) > 1:
        _refuse_unstated(world, normal)
    if ksm_ids:
        kfolio = world.folios[ksm_ids[0]]
        mapped_here = sum(1 for pte in ptes.values() if pte.folio == ksm_ids[0])
        if kfolio.mapcount != mapped_here:
            raise Unmodelled("ksm_merge with a KSM page mapped where ksmd does not scan")
        if not normal:
            return
        _merge_into(world, mappings, ptes, ksm_ids[0])
        return
    if len(normal) < 2:
        return  # one folio alone with its content (maybe mapped several times): no merge
    folios = [world.folios[f] for f in normal]
    if any(f.mapcount > 1 for f in folios):
        raise Unmodelled("ksm_merge of a page mapped several times (after fork)",
                         "which of its mappings merge during the scans depends on the "
                         "scan order")
    if any(f.lazyfree is not None for f in folios):
        raise Unmodelled("ksm_merge of a lazyfree page", "it may become the KSM page")
    if any(pte.soft_dirty and not m.softdirty_vma
           for m, pte in zip(mappings, ptes.values())):
        raise Unmodelled("ksm_merge of a soft-dirty page after clear_soft_dirty",
                         "only the page that becomes the KSM page keeps its soft-dirty bit")
    nodes = {f.node for f in folios}
    kid = world.new_id()
    world.folios[kid] = Folio(folios[0].content, mapcount=0, exclusive=False,
                              node=nodes.pop() if len(nodes) == 1 else None, ksm=True)
    _merge_into(world, mappings, ptes, kid)


def _refuse_unstated(world: World, folio_ids: list[int]) -> None:
    """Folios the model does not state a merge of."""
    for folio_id in folio_ids:
        folio = world.folios[folio_id]
        if folio.thp is not None:
            raise Unmodelled("ksm_merge of a page of a THP",
                             "try_to_merge_one_page splits the THP (split_huge_page)")
        if folio.swap_slot is not None:
            raise Unmodelled("ksm_merge of a page in the swap cache",
                             "the swap cache's reference and slot of a merged folio")


def _merge_into(world: World, mappings: list[_Mapping], ptes: dict, kid: int) -> None:
    """Every candidate mapping of another folio now maps the KSM folio `kid`."""
    from .mm import invalidate

    for m in mappings:
        pte = ptes[(m.mm_id, m.vpn)]
        if pte.folio == kid:
            continue
        invalidate(world, m.mm_id, m.vpn, m.vpn + 1)   # write_protect_page, replace_page
        world.unmap_folio(pte.folio)
        kfolio = world.folios[kid]
        world.folios[kid] = replace(kfolio, mapcount=kfolio.mapcount + 1)
        world.mms[m.mm_id].ptes[m.vpn] = Pte(Kind.PRESENT, kid, False, clean=True,
                                             soft_dirty=False)


def _counters(world: World, scanned: list[int]) -> tuple[int, int]:
    """pages_shared: stable nodes with rmap_items; pages_sharing: their other rmap_items.
    After the full scans every candidate mapping of a KSM page has its rmap_item in the
    stable tree and every stale one is gone (remove_rmap_item_from_tree)."""
    per_folio: dict[int, int] = {}
    for mm_id in scanned:
        mm = world.mms[mm_id]
        for vma in mm.vmas:
            if "mergeable" not in vma.flags:
                continue
            for vpn, pte in mm.ptes.items():
                if vma.start <= vpn < vma.end and pte.kind is Kind.PRESENT \
                        and world.folios[pte.folio].ksm:
                    per_folio[pte.folio] = per_folio.get(pte.folio, 0) + 1
    return len(per_folio), sum(n - 1 for n in per_folio.values())
