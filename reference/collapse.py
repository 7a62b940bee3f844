"""madvise(MADV_COLLAPSE) on private anonymous memory (mm/khugepaged.c, 7.2).

madvise_walk_vmas calls madvise_collapse for each VMA's part of the range (an error ends
the walk; holes make the result -ENOMEM as for every advice):

- collapse_possible(vma, TVA_FORCED_COLLAPSE) -> thp_vma_allowable_orders: a forced
  collapse ignores the sysfs THP mode (it works with THP `never`), but not VM_NOHUGEPAGE
  (vma_thp_disabled), a VMA without a whole aligned 2 MiB (thp_vma_suitable_order at
  vm_end - HPAGE_PMD_SIZE) or without an anon_vma (__thp_vma_allowable_orders): -EINVAL.
- Then each aligned 2 MiB inside the VMA's part of the range (hstart = ALIGN(start),
  hend = ALIGN_DOWN(end); none: 0) goes through collapse_single_pmd -> collapse_scan_pmd:
  a PMD mapping (a THP or the huge zero page) is SCAN_PMD_MAPPED and counts as done,
  untouched; a PMD without a PTE table is SCAN_NO_PTE_TABLE (the walk goes on, the result
  is -EINVAL). With `cc->is_khugepaged` false the max_ptes_none/swap/shared limits are all
  HPAGE_PMD_NR (collapse_max_ptes_*): every mix of none, zero-page, present, swap,
  device-private and device-exclusive entries and pages shared after fork collapses, even
  a table of 512 none entries (a zeroed THP).
- collapse_huge_page: alloc_charge_folio (GFP_TRANSHUGE on collapse_find_target_node: the
  first node holding the most of the present pages, node 0 when there are none; the VMA's
  policy plays no part) may fail: SCAN_ALLOC_HUGE_PAGE_FAIL ends the walk with -ENOMEM
  (the kernel's freedom, as for THP faults: thp.allocated). __collapse_huge_page_swapin
  faults every non-present entry in with do_swap_page, a read fault (swap-in; device-
  private pages come back through migrate_to_ram; device-exclusive entries are restored),
  with their own notifiers. Then MMU_NOTIFY_CLEAR over the 2 MiB (the mirror loses it and,
  by the dmirror_do_update quirk, the page after it), __collapse_huge_page_isolate and
  __collapse_huge_page_copy: the new folio holds each page's content (zero for none and
  zero-page entries); the old folios lose this mapping (freed when it was the last one,
  free_swap_cache; a folio shared with a fork child stays there, a KSM folio stays KSM
  for its other mappings, as after a zap). map_anon_folio_pmd_nopf
  maps it by the PMD: maybe_pmd_mkwrite(pmd_mkdirty) -- writable iff VM_WRITE, soft-dirty --
  and RMAP_EXCLUSIVE.

Refused by name: shmem and file mappings (collapse_scan_file / collapse_file), uffd
registered memory (collapse_max_ptes_none is 0 there and uffd-wp PTEs stop the scan), a
present page whose node the model does not know, and 6.1/6.12 (profile `thp`).
"""

from __future__ import annotations

from enum import Enum

from harness.prog import ZERO
from harness.prog.ops import Advice, Madvise, ThpEnabled

from . import thp, vma as vmas
from .expect import EINVAL, ENOMEM, Expect, done, fail
from .refuse import Unmodelled
from .state import Folio, Kind, Mm, Pte, Vma, World
from .thp import PMD_PAGES, Pmd, pmd_range


class Scan(Enum):
    """The scan_result values a collapse of one PMD reaches in the model."""

    SUCCEED = "SCAN_SUCCEED"
    PMD_MAPPED = "SCAN_PMD_MAPPED"
    NO_PTE_TABLE = "SCAN_NO_PTE_TABLE"
    ALLOC_HUGE_PAGE_FAIL = "SCAN_ALLOC_HUGE_PAGE_FAIL"


# madvise_collapse_errno
_ERRNO = {Scan.NO_PTE_TABLE: EINVAL, Scan.ALLOC_HUGE_PAGE_FAIL: ENOMEM}
# madvise_collapse: results after which the loop goes on to the next PMD
_CONTINUE = {Scan.SUCCEED, Scan.PMD_MAPPED, Scan.NO_PTE_TABLE}


def refuse_unstated(world: World, mm: Mm, start: int, end: int) -> None:
    """The cases of madvise collapse the model does not state (module docstring)."""
    if not world.profile.thp:
        raise Unmodelled("madvise collapse before 7.2",
                         "THPs are modelled from 7.2's mm/huge_memory.c only")
    from .uffd import armed
    if armed(world):
        raise Unmodelled("madvise collapse with userfaultfd-wp registered memory",
                         "collapse_max_ptes_none is 0 on a registered VMA and uffd-wp PTEs "
                         "stop collapse_scan_pmd (SCAN_PTE_UFFD_WP)")
    for vma in vmas.overlaps(mm, start, end):
        if vma.obj is not None:
            raise Unmodelled("madvise collapse of a shmem or file mapping",
                             "collapse_scan_file / collapse_file are not followed")


def madvise_collapse(world: World, mm_id: int, mm: Mm, start: int, end: int) -> Expect:
    """madvise_walk_vmas with MADV_COLLAPSE over [start, end); returns the expectation and
    changes `world`."""
    refuse_unstated(world, mm, start, end)
    covered = 0
    for vma in vmas.overlaps(mm, start, end):
        lo, hi = max(start, vma.start), min(end, vma.end)
        result = _collapse_vma(world, mm_id, mm, vma, lo, hi)
        if result is not None:
            return result
        covered += hi - lo
    if covered < end - start:
        return fail(ENOMEM, "madvise_walk_vmas: part of the range is not mapped -> -ENOMEM "
                            "(the mapped parts were collapsed)")
    return done("madvise_collapse: every aligned 2 MiB of the range is PMD-mapped now")


def collapse_allowed(vma: Vma) -> str | None:
    """Why collapse_possible(vma, TVA_FORCED_COLLAPSE) fails, or None: the sysfs mode does
    not count for a forced collapse (thp_vma_allowable_orders skips its mask)."""
    if "nohugepage" in vma.flags:
        return "VM_NOHUGEPAGE (vma_thp_disabled)"
    last = (vma.end - PMD_PAGES) - (vma.end - PMD_PAGES) % PMD_PAGES
    if last < vma.start:
        return "the VMA holds no aligned 2 MiB (thp_vma_suitable_order)"
    if vma.anon is None:
        return "the VMA has no anon_vma yet (__thp_vma_allowable_orders)"
    return None


def _collapse_vma(world: World, mm_id: int, mm: Mm, vma: Vma, lo: int,
                  hi: int) -> Expect | None:
    """madvise_collapse on one VMA's part [lo, hi) of the range: None when it returns 0."""
    refused = collapse_allowed(vma)
    if refused is not None:
        return fail(EINVAL, f"madvise_collapse: collapse_possible fails: {refused} -> "
                            "-EINVAL; the VMAs before it were advised")
    first, last = -(-lo // PMD_PAGES), hi // PMD_PAGES
    last_fail = None
    for index in range(first, last):
        result = _collapse_pmd(world, mm_id, mm, vma, index)
        if result not in (Scan.SUCCEED, Scan.PMD_MAPPED):
            last_fail = result
        if result not in _CONTINUE:
            break
    if last_fail is None:
        return None
    return fail(_ERRNO[last_fail],
                f"madvise_collapse: a 2 MiB ended in {last_fail.value} -> "
                f"{'-ENOMEM' if last_fail is Scan.ALLOC_HUGE_PAGE_FAIL else '-EINVAL'} "
                "(madvise_collapse_errno)")


def _collapse_pmd(world: World, mm_id: int, mm: Mm, vma: Vma, index: int) -> Scan:
    """collapse_scan_pmd and collapse_huge_page for the PMD `index`."""
    if index in mm.pmds:
        return Scan.PMD_MAPPED
    if index not in mm.tables:
        return Scan.NO_PTE_TABLE
    if mm.tables[index] is None:
        raise Unmodelled("madvise collapse where the PMD may or may not have a PTE table",
                         "mremap may have moved the PTE table")
    pages = pmd_range(index)
    node = _target_node(world, mm, pages)
    if not thp.allocated(world, mm, index):
        return Scan.ALLOC_HUGE_PAGE_FAIL
    _swap_in(world, mm_id, mm, vma, pages)
    from .mm import invalidate
    invalidate(world, mm_id, pages.start, pages.stop)
    _copy_into_thp(world, mm, vma, index, node)
    return Scan.SUCCEED


def _target_node(world: World, mm: Mm, pages: range) -> int:
    """collapse_find_target_node over the scan's node_load: the present pages' nodes (not
    none, zero-page or non-present entries); the first node with the most, 0 if none."""
    load = {}
    for vpn in pages:
        pte = mm.ptes.get(vpn)
        if pte is None or pte.kind is not Kind.PRESENT:
            continue
        folio = world.folios[pte.folio]
        if folio.node is None:
            raise Unmodelled("madvise collapse of a page whose node is open",
                             "collapse_find_target_node counts the pages' nodes")
        load[folio.node] = load.get(folio.node, 0) + 1
    if not load:
        return 0
    most = max(load.values())
    return min(node for node, count in load.items() if count == most)


def _swap_in(world: World, mm_id: int, mm: Mm, vma: Vma, pages: range) -> None:
    """__collapse_huge_page_swapin: do_swap_page without FAULT_FLAG_WRITE on each
    non-present entry, in address order (mm.read_fault follows do_swap_page)."""
    from .mm import read_fault
    for vpn in pages:
        pte = mm.ptes.get(vpn)
        if pte is not None and pte.kind in (Kind.SWAP, Kind.DEVICE, Kind.EXCLUSIVE):
            read_fault(world, mm_id, mm, vma, vpn)


def _copy_into_thp(world: World, mm: Mm, vma: Vma, index: int, node: int) -> None:
    """__collapse_huge_page_copy + map_anon_folio_pmd_nopf."""
    head = None
    for i, vpn in enumerate(pmd_range(index)):
        pte = mm.ptes.get(vpn)
        content = ZERO
        if pte is not None and pte.kind is Kind.PRESENT:
            content = world.content(pte.folio)
            world.unmap_folio(pte.folio)   # __collapse_huge_page_copy_succeeded
        folio = world.new_id()
        head = folio if head is None else head
        world.folios[folio] = Folio(content, node=node, thp=head, thp_index=i)
        mm.ptes[vpn] = Pte(Kind.PRESENT, folio, vma.prot.writable)
    mm.pmds[index] = Pmd(head)
    mm.tables.pop(index, None)   # deposited (pgtable_trans_huge_deposit)


def allocates(op) -> bool:
    """madvise collapse allocates THPs whatever the sysfs mode (thp.with_allocation_choices)."""
    return isinstance(op, Madvise) and op.advice is Advice.COLLAPSE


def refuse_khugepaged_start_scan(world: World, enabled: ThpEnabled) -> None:
    """THP going from never to `enabled` starts khugepaged (start_stop_khugepaged), whose
    thread scans the registered mms at once (khugepaged_do_scan before its first
    khugepaged_wait_work), asynchronously to the program. Every program process is
    registered from its birth: the runner's own mm is (hold_huge_zero_page's MADV_HUGEPAGE
    and huge read fault while THP is `madvise`: khugepaged_enter_vma), and khugepaged_fork
    registers each child of a registered mm (7.2 showed a program's pages collapsed after
    `thp always`). So the scan may collapse any PMD khugepaged accepts: in a VMA
    thp_vma_allowable_order(TVA_KHUGEPAGED) allows (anonymous, an anon_vma, the whole
    aligned 2 MiB inside, no VM_NOHUGEPAGE, and THP `always` or VM_HUGEPAGE), a PTE table
    with an entry other than none or the zero page (collapse_scan_pmd: max_ptes_none is
    HPAGE_PMD_NR - 1). Refused then; the model assumes the scan is over before the next op
    could make such a PMD."""
    for mm in world.mms.values():
        if not mm.alive:
            continue
        for vma in mm.vmas:
            if vma.obj is not None or vma.anon is None or "nohugepage" in vma.flags:
                continue
            if enabled is ThpEnabled.MADVISE and "hugepage" not in vma.flags:
                continue
            for index in range(-(-vma.start // PMD_PAGES), vma.end // PMD_PAGES):
                if index in mm.pmds or index not in mm.tables:
                    continue
                if any(vpn in mm.ptes and mm.ptes[vpn].kind is not Kind.ZERO
                       for vpn in pmd_range(index)):
                    raise Unmodelled("thp turned on where khugepaged may collapse",
                                     "khugepaged's start scan covers every program mm "
                                     "(khugepaged_fork from the runner's registered mm)")
