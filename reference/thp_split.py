"""madvise cold, pageout and free where they meet a THP (mm/madvise.c, 7.2): the walk
splits a THP the range covers in part, and leaves alone one mapped by another process.

- A PMD mapping (madvise_cold_or_pageout_pte_range's and madvise_free_huge_pmd's PMD
  path): the huge zero page is skipped; a folio folio_maybe_mapped_shared says is mapped
  by another process is skipped; a range covering part of the 2 MiB splits the folio
  (split_folio), and the walk goes on over its pages as small folios ("regular_folio";
  madvise_free_huge_pmd returns false and madvise_free_pte_range walks the new PTEs).
- PTEs mapping pages of a THP (madvise_cold_or_pageout_pte_range, madvise_free_pte_range):
  madvise_folio_pte_batch counts the PTEs from this one on that map the folio's next pages
  inside the range; fewer than the folio's 512 pages and not mapped shared: split_folio,
  and the same PTE is looked at again as a small folio; shared: the PTE is skipped.
- split_folio -> __folio_split -> unmap_folio: try_to_migrate with TTU_SPLIT_HUGE_PMD;
  try_to_migrate_one fires MMU_NOTIFY_CLEAR over the folio's range in each VMA the rmap walk
  visits (vma_address .. vma_address_end: the folio's range clamped to the VMA; VMAs in
  vm_pgoff order, until the folio is no longer mapped: rwc.done = folio_not_mapped), splits a PMD
  mapping in place (split_huge_pmd_locked) and replaces each PTE by a migration entry;
  remap_page -> remove_migration_pte maps every page again as its own order-0 folio, with
  the PTE's write and soft-dirty bits and PageAnonExclusive (RMAP_EXCLUSIVE unless a read
  migration entry), at the same PFN -- except a zero-filled page, which
  try_to_map_unused_to_zeropage (TTU_USE_SHARED_ZEROPAGE) maps as the shared zero page and
  frees. can_split_folio holds: an anonymous THP has no
  references beyond its mappings and the caller's (it is never left in an LRU batch, the
  test driver keeps no reference), so the split succeeds.

A device THP (7.2, device_thp.py) is left alone by all three: its device-private PMD and
PTEs are not present (the walk skips them before any split), and only free's
MMU_NOTIFY_CLEAR over the range reaches the mirror.

`cold` of a whole THP only ages it (nothing observable). Refused by name: `pageout` and
`free` of a whole THP (THP swap-out with CONFIG_THP_SWAP, a lazyfree THP and its reclaim
are not stated) and of a THP another process maps; a THP mapped by this process alone
whose pages are not PageAnonExclusive (after a fork: whether folio_maybe_mapped_shared
still says shared depends on the folio's mm-id slots); a split where another process has a
VMA over the 2 MiB (its anon_vma chain may put it in the rmap walk, notifier included) or
this process's VMAs there have other anon_vmas or one is VM_LOCKED; a THP with a
device-exclusive entry.
"""

from __future__ import annotations

from dataclasses import replace

from harness.prog.ops import Advice

from harness.prog import ZERO

from . import vma as vmas
from .refuse import Unmodelled
from .state import ZERO_PTE, Kind, Mm, World
from .thp import PMD_PAGES, pmd_of, split_pmd_mapping

LRU_ADVICE = {Advice.COLD, Advice.PAGEOUT, Advice.FREE}


def before_advice(world: World, mm_id: int, mm: Mm, advice: Advice, start: int,
                  end: int) -> None:
    """The splits the walk of `advice` over one VMA's part [start, end) makes; raises
    Unmodelled where the THP handling is not stated (module docstring)."""
    for index in range(pmd_of(start), pmd_of(end - 1) + 1):
        base = index * PMD_PAGES
        lo, hi = max(start, base), min(end, base + PMD_PAGES)
        pmd = mm.pmds.get(index)
        if pmd is not None:
            if pmd.zero:
                continue   # is_huge_zero_pmd: skipped
            if pmd.device:
                # a device-private PMD is not present: madvise_free_huge_pmd and
                # madvise_cold_or_pageout_pte_range leave it before any split ("if
                # (unlikely(!pmd_present(orig_pmd))) goto out"), and the PTE walk after
                # them finds no table (pte_offset_map_lock: NULL for a non-present PMD)
                continue
            if _mapped_shared(world, mm_id, pmd.head, advice):
                continue
            if hi - lo == PMD_PAGES:
                _whole(advice)
                continue
            split_folio(world, mm_id, mm, pmd.head)
            continue
        _pte_walk(world, mm_id, mm, advice, lo, hi)


def _pte_walk(world: World, mm_id: int, mm: Mm, advice: Advice, lo: int, hi: int) -> None:
    vpn = lo
    while vpn < hi:
        pte = mm.ptes.get(vpn)
        if pte is None or pte.kind is not Kind.PRESENT:
            vpn += 1
            continue
        folio = world.folios[pte.folio]
        if folio.thp is None:
            vpn += 1
            continue
        batch = _pte_batch(world, mm, vpn, hi)
        if batch == PMD_PAGES:
            _whole(advice)
            vpn += batch
            continue
        if _mapped_shared(world, mm_id, folio.thp, advice):
            vpn += 1
            continue
        split_folio(world, mm_id, mm, folio.thp)   # then this PTE again, as a small folio


def _pte_batch(world: World, mm: Mm, vpn: int, hi: int) -> int:
    """madvise_folio_pte_batch: the PTEs from `vpn` (before `hi`) mapping the folio's
    consecutive pages (folio_pte_batch ignores the dirty, young and soft-dirty bits)."""
    first = world.folios[mm.ptes[vpn].folio]
    count = 0
    while vpn + count < hi:
        pte = mm.ptes.get(vpn + count)
        if pte is None or pte.kind is not Kind.PRESENT:
            break
        folio = world.folios[pte.folio]
        if folio.thp != first.thp or folio.thp_index != first.thp_index + count:
            break
        count += 1
    return count


def _whole(advice: Advice) -> None:
    if advice is not Advice.COLD:   # cold only ages it: nothing to observe
        raise Unmodelled(f"madvise {advice.value} of a whole THP",
                         "THP swap-out (CONFIG_THP_SWAP) and lazyfree THPs are not stated")


def pages_of(world: World, head: int) -> list[tuple[int, int, int]]:
    """(mm id, vpn, folio id) of every mapping of a page of the THP `head`."""
    found = []
    for mm_id, mm in world.mms.items():
        if not mm.alive:
            continue
        for vpn, pte in mm.ptes.items():
            if pte.kind in (Kind.PRESENT, Kind.EXCLUSIVE, Kind.DEVICE) and \
                    world.folios[pte.folio].thp == head:
                found.append((mm_id, vpn, pte.folio))
    return found


def _mapped_shared(world: World, mm_id: int, head: int, advice: Advice) -> bool:
    """folio_maybe_mapped_shared (CONFIG_MM_ID): mapped by another process; the walk then
    leaves the THP alone, which the model states for cold only."""
    pages = pages_of(world, head)
    if any(other != mm_id for other, _, _ in pages):
        if advice is not Advice.COLD:
            raise Unmodelled(f"madvise {advice.value} of a THP another process maps",
                             "the walk skips it; the model's per-page reclaim would not")
        return True
    if not all(world.folios[folio].exclusive for _, _, folio in pages):
        raise Unmodelled(f"madvise {advice.value} of a THP shared after a fork",
                         "folio_maybe_mapped_shared depends on the folio's mm-id slots")
    return False


def split_folio(world: World, mm_id: int, mm: Mm, head: int) -> None:
    """split_folio of the THP (or device THP, device_thp.py) `head`, mapped in mm `mm_id`
    only (module docstring); a device-private folio keeps its zero-filled pages
    (__folio_split asks TTU_USE_SHARED_ZEROPAGE only for a folio that is not one)."""
    pages = pages_of(world, head)
    if any(mm.ptes[vpn].kind is Kind.EXCLUSIVE for _, vpn, _ in pages):
        raise Unmodelled("a THP split with a device-exclusive entry",
                         "try_to_migrate over device-exclusive entries is not followed")
    # all pages at one place (remap_thp.refuse_partial_folios): page 0's address
    _, vpn, folio_id = pages[0]
    base = vpn - world.folios[folio_id].thp_index
    device = world.folios[folio_id].device is not None
    if not device and any("locked" in vma.flags
                          for vma in vmas.overlaps(mm, base, base + PMD_PAGES)):
        # try_to_map_unused_to_zeropage keeps the zero-filled pages of an mlocked folio
        # (folio_test_mlocked, VM_LOCKED), and PG_mlocked of a THP straddling a locked
        # VMA is not followed
        raise Unmodelled("a THP split beside a VM_LOCKED VMA",
                         "PG_mlocked of the folio decides the zero-page remap")
    try_to_migrate_notifiers(world, mm_id, mm, base, [vpn for _, vpn, _ in pages])
    split_pmd_mapping(mm, pmd_of(base))
    # each page is its own folio now, at the same PFN
    head_pfn = world.pfns.pop(("devthp" if device else "thp", head), None)
    for _, vpn, folio_id in pages:
        folio = world.folios[folio_id]
        pte = mm.ptes[vpn]
        if not device and folio.content == ZERO:
            # remap_page with TTU_USE_SHARED_ZEROPAGE after a successful split of an
            # anonymous folio: try_to_map_unused_to_zeropage maps a zero-filled page as
            # the shared zero page (pte_mkspecial of vm_page_prot: read-only; the
            # soft-dirty and uffd-wp bits carried over) and the page is freed
            mm.ptes[vpn] = replace(ZERO_PTE, soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp)
            del world.folios[folio_id]
            continue
        if head_pfn is not None:
            world.pfns[("dev" if device else "pfn", folio_id)] = head_pfn + folio.thp_index
        world.folios[folio_id] = replace(folio, thp=None, thp_index=0)


def try_to_migrate_notifiers(world: World, mm_id: int, mm: Mm, base: int,
                             mapped: list[int]) -> None:
    """The MMU_NOTIFY_CLEAR notifiers try_to_migrate fires for a large folio at
    [base, base + 512) whose pages `mapped` this mm maps: rmap_walk_anon visits the VMAs of
    the folio's anon_vma whose vm_pgoff range meets the folio's
    (anon_vma_interval_tree_foreach, in vm_pgoff order: address order, unless mremap moved
    a VMA), each over its part of the folio (vma_address .. vma_address_end), until the
    folio is no longer mapped (rwc.done: folio_not_mapped). An mremap may have left such a
    VMA away from the folio (MREMAP_DONTUNMAP of part of a VMA keeps the source's
    anon_vma): its notifier fires there too, before page_vma_mapped_walk finds nothing."""
    from .mm import invalidate
    overlapping = vmas.overlaps(mm, base, base + PMD_PAGES)
    folio_vma = mm.vma_at(mapped[0])
    if {vma.anon for vma in overlapping if vma.anon is not None} != {folio_vma.anon} or any(
            vmas.overlaps(other, base, base + PMD_PAGES)
            for other_id, other in world.mms.items() if other_id != mm_id and other.alive):
        raise Unmodelled("a THP split beside VMAs of other anon_vmas or processes",
                         "the rmap walk's notifiers there are not followed")
    first = base + folio_vma.shift          # folio->index, in the VMAs' vm_pgoff space
    visited = sorted((vma for vma in mm.vmas if vma.anon == folio_vma.anon
                      and vma.start + vma.shift < first + PMD_PAGES
                      and first < vma.end + vma.shift),
                     key=lambda vma: vma.start + vma.shift)
    if len({vma.start + vma.shift for vma in visited}) != len(visited):
        raise Unmodelled("a THP split where VMAs of its anon_vma start at the same vm_pgoff",
                         "their order in the anon_vma interval tree is not followed")
    unvisited = set(mapped)
    for vma in visited:
        start = max(vma.start, first - vma.shift)
        end = min(vma.end, first - vma.shift + PMD_PAGES)
        invalidate(world, mm_id, start, end)
        unvisited = {vpn for vpn in unvisited if not start <= vpn < end}
        if not unvisited:
            break      # rwc.done: folio_not_mapped
