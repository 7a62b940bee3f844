"""Transparent huge pages (mm/huge_memory.c, 7.2): PMD-sized anonymous folios.

What is stated:

- `thp <enabled> <defrag>` sets the mode; each program starts with `never`.
- A fault on a page whose PMD is none maps a 2 MiB folio when the VMA allows it
  (__handle_mm_fault: pmd_none && thp_vma_allowable_order(TVA_PAGEFAULT, PMD_ORDER)):
  THP `always`, or `madvise` and the VMA has VM_HUGEPAGE; never with VM_NOHUGEPAGE
  (vma_thp_disabled); and the aligned 2 MiB lies inside the VMA (thp_vma_suitable_order).
  do_huge_pmd_anonymous_page first does vmf_anon_prepare (even for a read). A read maps the
  huge zero page (transparent_hugepage_use_zero_page, default on; the runner holds the huge
  zero folio, so mm_get_huge_zero_folio cannot fail), a write a new zeroed folio, mapped
  writable and dirty, PageAnonExclusive (map_anon_folio_pmd_nopf, RMAP_EXCLUSIVE).
- A write to the huge zero PMD: do_huge_zero_wp_pmd, a new THP under MMU_NOTIFY_CLEAR over
  the 2 MiB. A write to a read-only PMD-mapped THP that is PageAnonExclusive reuses it.
- Splitting the PMD (__split_huge_pmd_locked): the folio stays whole, now mapped by 512
  PTEs with the PMD's write, dirty and soft-dirty bits, each page PageAnonExclusive if the
  folio was; the huge zero PMD becomes 512 PTEs of the small zero page. It happens where a
  VMA boundary moves inside the 2 MiB (vma_adjust_trans_huge: munmap, mprotect, madvise
  flags, mlock) and where a zap covers part of it (zap_pmd_range: madvise dontneed). A zap
  of the whole 2 MiB drops the PMD (zap_huge_pmd) and its deposited table.
- A folio mapped in part stays whole: deferred_split_folio queues it, and only the
  deferred-split shrinker splits it, which runs under memory reclaim only (no op of the
  language reclaims through shrink_slab; the guest has ample memory).
- Page tables, because a THP needs pmd_none: a PMD gets a PTE table with its first PTE;
  munmap frees the tables free_pgtables -> free_pgd_range reaches (between the VMAs left
  on either side); madvise dontneed of a whole 2 MiB inside one VMA frees its table (7.2
  CONFIG_PT_RECLAIM, zap_pte_range -> zap_empty_pte_table).

Every op that is not stated for THPs yet is refused on a THP (`guard`). THPs migrated to
device memory (device THPs) are in device_thp.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.prog import ZERO
from harness.prog.ops import (
    Advice, CheckExclusive, ClearSoftDirty, CloseDevice, Compact, CpuRead, CpuWrite,
    DevRead, DevWrite, Exclusive, Exit, Flags, Fork, KsmMerge, Madvise, Map,
    MigrateToDev, MigrateToSys, Mlock, MovePages, Mprotect, Mremap, Munlock, Munmap,
    OpenDevice, Pagemap, Release, Smaps, Snapshot, Thp, ThpEnabled, UffdRegister,
    UffdUnregister, UffdWriteprotect,
)

from .expect import done
from .refuse import Unmodelled, op_name
from .state import Folio, Kind, Mm, Pte, Vma, World
from .uapi import PROT_NONE, PROT_PMD, PROT_READ

PMD_PAGES = 512


@dataclass(frozen=True)
class Pmd:
    """A PMD entry mapping 2 MiB at once: the huge zero page (`head` None) or the THP whose
    head page is model folio `head`; with `device`, a device-private PMD entry of a device
    THP (device_thp.py)."""

    head: int | None = None
    device: bool = False

    @property
    def zero(self) -> bool:
        return self.head is None


HUGE_ZERO = Pmd()


def pmd_of(vpn: int) -> int:
    return vpn // PMD_PAGES


def pmd_range(index: int) -> range:
    return range(index * PMD_PAGES, (index + 1) * PMD_PAGES)


# ------------------------------------------------------------------ the thp op

def set_mode(world: World, op: Thp, places) -> list:
    """enabled_store -> start_stop_khugepaged. The runner sets khugepaged/
    scan_sleep_millisecs to a day, so the thread scans only once, when it starts (THP going
    from never to enabled). Every program mm is registered with khugepaged from its fork
    (collapse.refuse_khugepaged_start_scan): turning THP on where that scan may collapse
    something is refused, and so is turning it on a second time."""
    enabled, _, ever_enabled = world.thp
    turning_on = op.enabled is not ThpEnabled.NEVER
    if turning_on and not world.profile.thp:
        raise Unmodelled("thp on kernels before 7.2",
                         "THP is modelled from 7.2's mm/huge_memory.c only")
    if turning_on and enabled is ThpEnabled.NEVER and ever_enabled:
        raise Unmodelled("thp enabled again",
                         "khugepaged starts and scans the mms registered while THP was on")
    if turning_on and enabled is ThpEnabled.NEVER:
        from .collapse import refuse_khugepaged_start_scan
        refuse_khugepaged_start_scan(world, op.enabled)
    world.thp = (op.enabled, op.defrag, ever_enabled or turning_on)
    return [(done("the sysfs files accept every mode"), world)]


# ------------------------------------------------------------------ page tables

def note_tables(world: World) -> None:
    """Before each op: every PMD with a PTE (not one mapped as a whole) has a PTE table."""
    for mm in world.mms.values():
        if not mm.alive:
            continue
        tables, pmds = mm.tables, mm.pmds
        for vpn in mm.ptes:
            index = vpn // PMD_PAGES
            if index not in pmds and tables.get(index) is not True:
                tables[index] = True


def free_pgtables(mm: Mm, start: int, end: int) -> None:
    """munmap of [start, end) (VMAs already removed): free_pgtables -> free_pgd_range frees
    the PTE tables of the PMDs the removed range reaches, but not one shared with the VMA
    left before it (floor: prev->vm_end) or after it (ceiling: next->vm_start)."""
    floor = max((v.end for v in mm.vmas if v.end <= start), default=0)
    ceiling = min((v.start for v in mm.vmas if v.start >= end), default=None)
    addr = start - start % PMD_PAGES
    if addr < floor:
        addr += PMD_PAGES
    if ceiling is not None:
        ceiling -= ceiling % PMD_PAGES
        if end - 1 > ceiling - 1:
            end -= PMD_PAGES
    if addr > end - 1:
        return
    for index in range(addr // PMD_PAGES, (end - 1) // PMD_PAGES + 1):
        mm.tables.pop(index, None)


def reclaim_empty_tables(mm: Mm, start: int, end: int) -> None:
    """madvise dontneed zapped [start, end) of one VMA: zap_pte_range frees the PTE table of
    every PMD the zap covers whole (pte_table_reclaim_possible: CONFIG_PT_RECLAIM, on x86;
    nothing is skipped in a private anonymous VMA)."""
    first = -(-start // PMD_PAGES)
    for index in range(first, end // PMD_PAGES):
        mm.tables.pop(index, None)


def fork_pmds_and_tables(parent: Mm, child: Mm, copied: list[Vma]) -> None:
    """copy_pmd_range gives the child a PTE table wherever the parent has one in a VMA
    whose page tables are copied, and copies PMD mappings (copy_huge_pmd: the huge zero
    PMD as it is; a THP PMD write-protected in both, folio_try_dup_anon_rmap_pmd clearing
    PageAnonExclusive -- the per-page entries, already copied, say the same)."""
    for vma in copied:
        for index in range(pmd_of(vma.start), pmd_of(vma.end - 1) + 1):
            if index in parent.tables:
                child.tables[index] = parent.tables[index]
            if index in parent.pmds:
                child.pmds[index] = parent.pmds[index]


# ------------------------------------------------------------------ faults

def huge_fault_allowed(world: World, mm: Mm, vma: Vma, vpn: int) -> bool:
    """__handle_mm_fault takes create_huge_pmd: the PMD is none and
    thp_vma_allowable_order(vma, TVA_PAGEFAULT, PMD_ORDER) (huge_anon_orders_inherit is the
    PMD order by default) and thp_vma_suitable_order (the aligned 2 MiB inside the VMA)."""
    enabled = world.thp[0]
    if enabled is ThpEnabled.NEVER or "nohugepage" in vma.flags:
        return False
    if vma.obj is not None:
        # A shmem or file VMA: create_huge_pmd asks vm_ops->huge_fault, which shmem has
        # not (its huge folios follow shmem_enabled and the huge= mount option, "never" by
        # default), so VM_FAULT_FALLBACK; a private file mapping COWs 4 KiB pages.
        return False
    if enabled is ThpEnabled.MADVISE and "hugepage" not in vma.flags:
        return False
    index = pmd_of(vpn)
    if not (vma.start <= index * PMD_PAGES and (index + 1) * PMD_PAGES <= vma.end):
        return False
    if index in mm.pmds:
        return False
    if index not in mm.tables:
        return True
    if mm.tables[index] is None:
        raise Unmodelled("a fault where THP is possible and the PMD may or may not be none",
                         "mremap may have moved the PTE table")
    return False


def huge_read_fault(world: World, mm: Mm, vpn: int) -> None:
    """do_huge_pmd_anonymous_page for a read: vmf_anon_prepare, then set_huge_zero_folio
    (a special, read-only PMD without the soft-dirty bit)."""
    from . import vma as vmas
    vmas.anon_prepare(world, mm, vpn)
    index = pmd_of(vpn)
    mm.pmds[index] = HUGE_ZERO
    zero = Pte(Kind.ZERO, soft_dirty=False)
    for page in pmd_range(index):
        mm.ptes[page] = zero
    mm.tables.pop(index, None)


def huge_write_fault(world: World, mm: Mm, vma: Vma, vpn: int) -> bool:
    """__do_huge_pmd_anonymous_page: vma_alloc_anon_folio_pmd (zeroed), then
    map_anon_folio_pmd_nopf: maybe_pmd_mkwrite(pmd_mkdirty) -- writable (the write fault
    implies VM_WRITE), dirty and so soft-dirty -- and RMAP_EXCLUSIVE. False when the
    allocation fails (see allocated): VM_FAULT_FALLBACK, the caller maps a 4 KiB page."""
    from . import vma as vmas
    vmas.anon_prepare(world, mm, vpn)
    index = pmd_of(vpn)
    if not allocated(world, mm, index):
        return False
    node = vmas.alloc_node(vma)
    head = None
    for i, page in enumerate(pmd_range(index)):
        folio = world.new_id()
        head = folio if head is None else head
        world.folios[folio] = Folio(ZERO, node=node, thp=head, thp_index=i)
        mm.ptes[page] = Pte(Kind.PRESENT, folio, True)
    mm.pmds[index] = Pmd(head)
    mm.tables.pop(index, None)
    return True


def pmd_write_fault(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> bool:
    """A write fault on a PMD mapping (wp_huge_pmd -> do_huge_pmd_wp_page); False when it
    falls back to a PTE fault."""
    from .mm import invalidate
    index = pmd_of(vpn)
    pmd = mm.pmds[index]
    if pmd.zero:
        # do_huge_zero_wp_pmd: a new THP replaces the huge zero page under MMU_NOTIFY_CLEAR
        # over [haddr, haddr + HPAGE_PMD_SIZE). If the allocation fails, do_huge_pmd_wp_page
        # falls back to __split_huge_pmd (its own MMU_NOTIFY_CLEAR over the 2 MiB: 512
        # small zero pages) and the fault goes on as a PTE fault (do_wp_page on the zero
        # page): False, the caller takes it.
        invalidate(world, mm_id, index * PMD_PAGES, (index + 1) * PMD_PAGES)
        if not allocated(world, mm, index):
            split_pmd_mapping(mm, index)
            return False
        del mm.pmds[index]
        huge_write_fault(world, mm, vma, vpn)
        return True
    pages = [mm.ptes[page].folio for page in pmd_range(index)]
    if not world.folios[pages[0]].exclusive:
        if any(world.folios[folio].mapcount != 1 for folio in pages):
            # Mapped elsewhere too (after fork): folio_ref_count() > 1, so
            # "goto unlock_fallback": __split_huge_pmd (MMU_NOTIFY_CLEAR over the 2 MiB)
            # and VM_FAULT_FALLBACK; do_wp_page then copies the one page.
            invalidate(world, mm_id, index * PMD_PAGES, (index + 1) * PMD_PAGES)
            split_pmd_mapping(mm, index)
            return False
        # Only this PMD maps the folio (the other side unmapped it): folio_ref_count() == 1
        # ("we always drain the LRU cache immediately after adding a THP"), so
        # folio_move_anon_rmap, SetPageAnonExclusive and reuse.
        for folio in pages:
            world.folios[folio] = replace(world.folios[folio], exclusive=True)
    # PageAnonExclusive(head): reuse, maybe_pmd_mkwrite(pmd_mkdirty) -> writable, soft-dirty.
    for page in pmd_range(index):
        mm.ptes[page] = replace(mm.ptes[page], writable=True, soft_dirty=True)
    return True


# ------------------------------------------------------------------ allocation failure

@dataclass
class AllocationPlan:
    """Which THP allocations of one op fail: the kernel's freedom. vma_alloc_anon_folio_pmd
    may return NULL (no free 2 MiB block and, with defrag off for the VMA, no compaction
    tried; or the memcg charge fails): THP_FAULT_FALLBACK. Each allocation of an op is its
    own choice; `seen` collects the PMDs where the op allocates."""

    failing: frozenset = frozenset()
    seen: list = None

    def __post_init__(self):
        self.seen = []


# The op being stepped (semantics.step sets it around every op while THP is on).
_PLAN: list[AllocationPlan | None] = [None]


def allocated(world: World, mm: Mm, index: int) -> bool:
    """Does the THP allocation for PMD `index` succeed? Under the current plan; a PMD where
    it fails gets a PTE table at once (the fallback fault installs it)."""
    plan = _PLAN[0]
    key = (id(mm), index)
    if plan is None:
        return True
    plan.seen.append(key)
    if key in plan.failing:
        mm.tables[index] = True
        return False
    return True


MAX_PLANS = 32   # check.MAX_STATES: more outcomes than the model keeps states


def with_allocation_choices(world: World, run, always: bool = False) -> list:
    """The outcomes of `run(world)` (one op) for every choice of which of its THP
    allocations fail: all succeed first (the usual case, and the state kept first when the
    state set is cut at check.MAX_STATES), then one failing, two, ... The allocations an op
    makes do not depend on one another's outcome (a fallback only fills its own PMD), so
    the PMDs of the all-succeed run are the choices. Ops allocate THPs only while THP is
    on, except those `always` marks (madvise collapse ignores the mode)."""
    if world.thp[0] is ThpEnabled.NEVER and not always:
        return run(world)
    pristine = world.clone()
    first = AllocationPlan()
    _PLAN[0] = first
    try:
        outcomes = run(world)
    finally:
        _PLAN[0] = None
    # the mms of a clone are other objects: name PMDs by mm id
    ids = {id(mm): mm_id for mm_id, mm in world.mms.items()}
    choices = [(ids[key[0]], key[1]) for key in dict.fromkeys(first.seen)]
    for failing in _failure_sets(choices):
        branch = pristine.clone()
        mms = {mm_id: id(mm) for mm_id, mm in branch.mms.items()}
        _PLAN[0] = AllocationPlan(frozenset((mms[m], i) for m, i in failing))
        try:
            outcomes += run(branch)
        finally:
            _PLAN[0] = None
    return outcomes


def _failure_sets(choices: list) -> list:
    from itertools import combinations
    sets = []
    for size in range(1, len(choices) + 1):
        for failing in combinations(choices, size):
            if len(sets) + 1 >= MAX_PLANS:
                return sets
            sets.append(failing)
    return sets


# ------------------------------------------------------------------ splitting

def split_pmd_mapping(mm: Mm, index: int) -> None:
    """__split_huge_pmd_locked: the PMD becomes the deposited PTE table with 512 PTEs that
    keep its write, dirty and soft-dirty bits (the model's per-page entries already hold
    them) and each page PageAnonExclusive if the head was (folio_add_anon_rmap_ptes with
    RMAP_EXCLUSIVE; the model keeps the flag per page already); the huge zero PMD becomes
    512 PTEs of the small zero page (__split_huge_zero_page_pmd), the same entries to the
    model. The folio itself stays whole."""
    if mm.pmds.pop(index, None) is not None:
        mm.tables[index] = True


def gup_split_pmd(world: World, mm_id: int, mm: Mm, vpn: int) -> None:
    """GUP with FOLL_SPLIT_PMD (make_device_exclusive): follow_pmd_mask meets a PMD
    mapping and calls split_huge_pmd (MMU_NOTIFY_CLEAR over the 2 MiB) before it follows
    the PTE; the huge zero PMD too, so a write then copies one small zero page."""
    from .mm import invalidate
    index = pmd_of(vpn)
    if index in mm.pmds:
        invalidate(world, mm_id, index * PMD_PAGES, (index + 1) * PMD_PAGES)
        split_pmd_mapping(mm, index)


def zap_pmds(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """zap_pmd_range over [start, end): a PMD mapping covered in part is split first
    (__split_huge_pmd: MMU_NOTIFY_CLEAR over its 2 MiB, inside the zap's own notifier), one
    covered whole is dropped with its deposited table (zap_huge_pmd)."""
    if not mm.pmds:
        return
    from .mm import invalidate
    for index in [i for i in mm.pmds if i * PMD_PAGES < end and start < (i + 1) * PMD_PAGES]:
        base = index * PMD_PAGES
        if start <= base and base + PMD_PAGES <= end:
            del mm.pmds[index]
        else:
            invalidate(world, mm_id, base, base + PMD_PAGES)
            split_pmd_mapping(mm, index)


# ------------------------------------------------------------------ the device's view

def snapshot_byte(mm: Mm, vpn: int, byte: int) -> int:
    """dmirror_mkentry of a page hmm_vma_handle_pmd reported: map order PMD adds
    HMM_DMIRROR_PROT_PMD; the huge zero page is not is_zero_pfn() (that is the small zero
    page only), so it reads NONE|READ|PMD rather than ZERO|READ."""
    pmd = mm.pmds.get(pmd_of(vpn))
    if pmd is None:
        return byte
    if pmd.zero:
        return PROT_NONE | PROT_READ | PROT_PMD
    return byte | PROT_PMD


# ------------------------------------------------------------------ what is not stated yet

# Ops stated for THPs (their functions call the hooks above).
def _refuse_batched_soft_dirty(world: World, op, places) -> None:
    """7.2's change_pte_range changes a batch of PTEs mapping consecutive pages of one large
    folio at once (mprotect_folio_pte_batch: same write and soft-dirty bits, dirty and
    young may differ); modify_prot_start_ptes collects the batch's dirty bits with
    pte_mkdirty, which on x86 sets _PAGE_SOFT_DIRTY as well, and the result is written to
    every PTE of the batch: after clear_soft_dirty, mprotect or uffd_wp of a PTE-mapped THP
    marks all of a batch soft-dirty when a page after its first is dirty
    (docs/findings.md #22). The model does not follow the hardware dirty bit, so it
    refuses such a batch where the bit would show (the VMA lacks VM_SOFTDIRTY)."""
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    for vpn in range(start, end - 1):
        first, second = mm.ptes.get(vpn), mm.ptes.get(vpn + 1)
        if not (_pte_mapped_thp_page(world, mm, vpn, first)
                and _pte_mapped_thp_page(world, mm, vpn + 1, second)):
            continue
        a, b = world.folios[first.folio], world.folios[second.folio]
        vma = mm.vma_at(vpn)
        if (a.thp == b.thp and b.thp_index == a.thp_index + 1 and pmd_of(vpn) == pmd_of(vpn + 1)
                and vma is mm.vma_at(vpn + 1) and not vma.softdirty
                and not first.soft_dirty and not second.soft_dirty
                and first.writable == second.writable and not second.clean):
            raise Unmodelled(f"{op_name(op)} of a PTE-mapped THP whose soft-dirty bits are clear",
                             "the batch's dirty bits set soft-dirty on every PTE of it: "
                             "docs/findings.md #22")


def _pte_mapped_thp_page(world: World, mm: Mm, vpn: int, pte: Pte | None) -> bool:
    return (pte is not None and pte.kind is Kind.PRESENT and pmd_of(vpn) not in mm.pmds
            and world.folios[pte.folio].thp is not None)


_THP_AWARE = (Map, Munmap, Mprotect, CpuRead, CpuWrite, Pagemap, Thp, OpenDevice,
              CloseDevice, Release, Flags, CheckExclusive, Exit, Mlock, Munlock,
              DevRead, DevWrite, Snapshot, Fork, Exclusive, Smaps,
              # uffd.py: change_huge_pmd, or a split where the range cuts the PMD
              UffdRegister, UffdUnregister, UffdWriteprotect,
              # device_thp.py: whole PMDs migrate as device THPs, partial pieces split
              MigrateToDev, MigrateToSys)
_THP_AWARE_ADVICE = {Advice.DONTNEED, Advice.POPULATE_READ, Advice.POPULATE_WRITE,
                     Advice.HUGEPAGE, Advice.NOHUGEPAGE, Advice.DONTFORK, Advice.DOFORK,
                     Advice.WIPEONFORK, Advice.KEEPONFORK, Advice.MERGEABLE,
                     Advice.UNMERGEABLE,
                     # madvise_willneed on anonymous memory reads swap entries in
                     # (swapin_walk_pmd_entry: pte_offset_map_lock finds no table under a
                     # PMD mapping, and a THP page is no swap entry): nothing to do here
                     Advice.WILLNEED,
                     # collapse.py: a PMD mapping is SCAN_PMD_MAPPED, a PTE-mapped THP
                     # is copied into a new one like any other folio
                     Advice.COLLAPSE,
                     # thp_split.py: the splits of a THP the range covers in part
                     Advice.COLD, Advice.PAGEOUT, Advice.FREE}


def has_huge(world: World, mm: Mm, start: int | None = None, end: int | None = None) -> bool:
    """Whether [start, end) (everything if None) has a PMD mapping or a page of a THP."""
    for index in mm.pmds:
        if start is None or (index * PMD_PAGES < end and start < (index + 1) * PMD_PAGES):
            return True
    ptes = mm.ptes
    vpns = ptes if start is None else (v for v in range(start, end) if v in ptes)
    for vpn in vpns:
        pte = ptes[vpn]
        if pte.kind is not Kind.ZERO and world.folios[pte.folio].thp is not None:
            return True
    return False


def guard(world: World, op, places) -> None:
    """Refuse an op the model does not state for THPs yet when it meets one (or, for ops
    that fault pages in, when a fault may map one)."""
    if isinstance(op, (Mprotect, UffdWriteprotect)):
        _refuse_batched_soft_dirty(world, op, places)
    if isinstance(op, _THP_AWARE):
        return
    if isinstance(op, Madvise) and op.advice in _THP_AWARE_ADVICE:
        return
    if isinstance(op, Mremap):
        # remap_thp.py: move_page_tables moves or splits PMD mappings; a resize in place
        # only unmaps a tail (munmap) or grows the VMA
        if op.to is not None:
            from .remap_thp import refuse_partial_folios
            mm_id = world.procs[op.proc]
            refuse_partial_folios(world, mm_id, world.mms[mm_id], *places.vpns(op.range))
        return
    if isinstance(op, ClearSoftDirty):
        # clear_soft_dirty_pmd write-protects a PMD mapping and clears its soft-dirty bit,
        # what the model's per-page entries of it get; the huge zero PMD has no bit.
        return
    if isinstance(op, MovePages) and op.node is None:
        # do_pages_stat_array: folio_walk_start finds the THP at PMD or PTE level
        # (folio_nid), the huge zero page is -EFAULT like the small one.
        return
    if isinstance(op, Compact):
        if any(has_huge(world, mm) for mm in world.mms.values() if mm.alive):
            raise Unmodelled("compact with a THP", "compaction may migrate THPs")
        return
    if isinstance(op, KsmMerge):
        if any(has_huge(world, mm) for mm in world.mms.values() if mm.alive):
            # ksmd splits a THP it wants to merge a page of (try_to_merge_one_page)
            raise Unmodelled("ksm_merge with a THP", "ksmd may split THPs")
        return
    page_range = getattr(op, "range", None)
    if page_range is None:
        return
    mm = world.acting_mm(op)
    if mm is None:
        return
    start, end = places.vpns(page_range)
    name = op_name(op)
    if has_huge(world, mm, start, end):
        raise Unmodelled(f"{name} on a THP", "not stated for PMD-sized folios yet")
