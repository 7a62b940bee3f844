"""One op at a time: what it does to the World and what it may report.

`step(world, op, places)` returns the allowed outcomes as (Expect, next World) pairs; nearly
every op has exactly one and changes `world` in place. The CPU-side ops are here, the
dmirror ioctls in hmm.py.
"""

from __future__ import annotations

from dataclasses import replace

from harness.prog import (
    CheckExclusive, Content, CpuRead, CpuWrite, DevRead, DevWrite, Exclusive, Fork, Map,
    Mprotect, Munmap, Op, OpenDevice, Snapshot,
)
from harness.prog.ops import (
    Advice, CloseDevice, Exit, Flags, Madvise, MapKind, MigrateToDev,
    ClearSoftDirty, Compact, KsmMerge, Mbind, MigrateToSys, Mlock, MovePages, Mremap, Munlock,
    Pagemap, Release, Smaps, Thp, UffdRegister, UffdUnregister, UffdWriteprotect,
)

from . import (
    coherent, collapse, device, device_thp, hmm, ksm, mm as cpu, numa, pagemap, reclaim, remap, rmap,
    shmem, smaps, thp, thp_split, uffd, uffd_shmem, vma as vmas,
)
from .expect import EEXIST, EINVAL, ENOMEM, SEGV, SIGBUS, WRITTEN, Expect, done, fail, read_page
from .places import Places
from .refuse import Unmodelled
from .state import Dmirror, Kind, Pte, World
from .uffd_wp import UffdWriteProtected

__all__ = ["Unmodelled", "step"]

Outcome = tuple[Expect, World]


def _map(world: World, op: Map, places: Places) -> list[Outcome]:
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    taken = vmas.overlaps(mm, start, end)
    if taken:
        return [(fail(EEXIST, f"do_mmap: MAP_FIXED_NOREPLACE and {places.name(taken[0].start)} "
                              "is already mapped -> -EEXIST"), world)]
    if op.kind is MapKind.ANON:
        vmas.map_new(mm, start, end, world.profile)
    else:
        region_start, _ = places.vpns(replace(op.range, start=0, end=0))
        shmem.map_backed(world, mm, start, end, op.kind, op.range.region, region_start,
                         places.pages(op.range.region))
    return [(done("do_mmap: the range is free"), world)]


def _munmap(world: World, op: Munmap, places: Places) -> list[Outcome]:
    start, end = places.vpns(op.range)
    cpu.munmap(world, world.procs[op.proc], start, end)
    return [(done("do_vmi_munmap: an aligned range always succeeds"), world)]


def _mprotect(world: World, op: Mprotect, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    err, changed, splits = vmas.mprotect(mm, start, end, op.prot, world.profile)
    for vma, vpn in splits:
        cpu.split_pmd(world, mm_id, vma, vpn)
    for piece_start, piece_end in changed:
        shmem.set_page_prot(mm, piece_start)   # mprotect_fixup: vma_set_page_prot
        cpu.change_protection(world, mm_id, mm, piece_start, piece_end)
        vma = mm.vma_at(piece_start)
        if op.prot.writable and "locked" in vma.flags and not vma.shared:
            # mprotect_fixup: "Private VM_LOCKED VMA becoming writable: trigger COW to avoid
            # major fault on access" -> populate_vma_page_range (write faults).
            for vpn in range(piece_start, piece_end):
                cpu.populate_page(world, mm_id, mm, vma, vpn, True)
    if err:
        return [(fail(err, "do_mprotect_pkey: part of the range is not mapped -> -ENOMEM "
                           "(VMAs before the hole keep their new protection)"), world)]
    return [(done("do_mprotect_pkey: the whole range is mapped"), world)]


def _cpu_access(world: World, op, places: Places, kind: str, permitted, access) -> list[Outcome]:
    """A CPU load or store over every page of the range: SIGSEGV where the VMA is missing or
    does not permit it (the runner goes on to the next page), `access` everywhere else."""
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    pages, why = [], []
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        if vma is None or not permitted(vma.prot):
            pages.append(SEGV)
            why.append(_segv_why(places.name(vpn), vma, kind))
            continue
        page, reason = access(mm_id, mm, vma, vpn)
        pages.append(page)
        why.append(reason)
    return [(done(CPU_ERRNO, pages=tuple(pages), page_why=tuple(why)), world)]


def _write(world: World, op: CpuWrite, places: Places) -> list[Outcome]:
    def store(mm_id, mm, vma, vpn):
        try:
            cpu.write_fault(world, mm_id, mm, vma, vpn)
        except UffdWriteProtected:
            return SIGBUS, (f"{places.name(vpn)} is uffd-wp: do_wp_page -> handle_userfault "
                            "-> VM_FAULT_SIGBUS (UFFD_FEATURE_SIGBUS)")
        reclaim.dirtied(world, mm, vpn)  # the store sets the PTE's dirty bit
        world.set_content(mm.ptes[vpn].folio, Content(op.seed, vpn))
        return WRITTEN, f"{places.name(vpn)} is in a writable VMA"

    return _cpu_access(world, op, places, "write", lambda prot: prot.writable, store)


def _read(world: World, op: CpuRead, places: Places) -> list[Outcome]:
    def load(mm_id, mm, vma, vpn):
        cpu.read_fault(world, mm_id, mm, vma, vpn)
        content = world.content(mm.ptes[vpn].folio)
        return read_page(content), f"{places.name(vpn)} holds {content}"

    return _cpu_access(world, op, places, "read", lambda prot: prot.readable, load)


CPU_ERRNO = "CPU loads and stores report a signal per page, never an errno"


def _segv_why(name: str, vma, access: str) -> str:
    if vma is None:
        return f"{name} is not mapped: the {access} fault finds no VMA (SIGSEGV)"
    return f"{name}'s VMA is {vma.prot.value}: access_error refuses the {access} (SIGSEGV)"


def _fork(world: World, op: Fork, places: Places) -> list[Outcome]:
    parent = world.procs[op.proc]
    child = world.new_id()
    world.procs[op.child] = child
    cpu.fork(world, parent, child)
    ksm.fork(world, parent, child)
    for (proc, name), mirror_id in list(world.fds.items()):
        if proc == op.proc:
            # The child shares the parent's open files: the same dmirror, still bound to the
            # parent's mm (dmirror_fops_open took current->mm of the opener).
            world.fds[(op.child, name)] = mirror_id
    return [(done("fork succeeds"), world)]


def _open(world: World, op: OpenDevice, places: Places) -> list[Outcome]:
    mirror_id = world.new_id()
    world.mirrors[mirror_id] = Dmirror(op.device, world.procs[op.proc])
    world.fds[(op.proc, op.fd)] = mirror_id
    return [(done("dmirror_fops_open succeeds"), world)]


# ------------------------------------------------------------------ madvise

# Advice that sets or clears a VMA flag (madvise_update_vma -> vma_modify_flags: merge or
# split like mprotect, vma_adjust_trans_huge included), as (flag, set?, cleared flags).
_FLAG_ADVICE = {
    Advice.DONTFORK: ("dontcopy", True, ()), Advice.DOFORK: ("dontcopy", False, ()),
    Advice.WIPEONFORK: ("wipeonfork", True, ()), Advice.KEEPONFORK: ("wipeonfork", False, ()),
    # ksm_madvise: MERGEABLE registers the mm with KSM, UNMERGEABLE first breaks the KSM
    # pages of VM_MERGEABLE VMAs (ksm.py); ksmd merges only during a ksm_merge op.
    Advice.MERGEABLE: ("mergeable", True, ()), Advice.UNMERGEABLE: ("mergeable", False, ()),
    # hugepage_madvise: the two flags exclude each other; with THP "never" (the runner's
    # setting) neither changes what a fault maps, and khugepaged_enter_vma does nothing.
    Advice.HUGEPAGE: ("hugepage", True, ("nohugepage",)),
    Advice.NOHUGEPAGE: ("nohugepage", True, ("hugepage",)),
}
# Advice refused on a VM_LOCKED VMA with -EINVAL, which stops madvise_walk_vmas there:
# can_madv_lru_vma (cold, pageout), madvise_dontneed_free_valid_vma (dontneed, free).
_NOT_ON_LOCKED = {Advice.COLD, Advice.PAGEOUT, Advice.DONTNEED, Advice.FREE}


def _madvise(world: World, op: Madvise, places: Places) -> list[Outcome]:
    """madvise(2) on private anonymous memory (mm/madvise.c, 7.2): madvise_walk_vmas
    advises VMA by VMA; a hole makes the result -ENOMEM but the walk goes on; an error of
    one VMA ends it there."""
    advice = op.advice
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    if advice is Advice.COLLAPSE:
        return [(collapse.madvise_collapse(world, mm_id, mm, start, end), world)]
    if advice in (Advice.POPULATE_READ, Advice.POPULATE_WRITE):
        return _populate(world, mm_id, mm, start, end, advice is Advice.POPULATE_WRITE, op, places)
    if advice in _FLAG_ADVICE:
        return _madvise_flag(world, mm_id, mm, start, end, advice, places)
    pieces = []
    einval = None
    for vma in vmas.overlaps(mm, start, end):
        if advice in _NOT_ON_LOCKED and "locked" in vma.flags:
            einval = max(start, vma.start)
            break
        backed_einval = shmem.madvise_einval(advice, vma)
        if backed_einval:
            einval = max(start, vma.start)
            break
        pieces.append((max(start, vma.start), min(end, vma.end)))
    if advice in thp_split.LRU_ADVICE:
        for piece_start, piece_end in pieces:
            thp_split.before_advice(world, mm_id, mm, advice, piece_start, piece_end)
    if advice in (Advice.FREE, Advice.PAGEOUT):
        for piece_start, piece_end in pieces:
            ksm.refuse_ksm_pages(world, mm, piece_start, piece_end, f"madvise {advice.value} "
                                 "of a KSM page", "a KSM folio made lazyfree or reclaimed")
    worlds = [world]
    for piece_start, piece_end in pieces:
        if advice is Advice.DONTNEED:
            # madvise_dontneed_single_vma -> zap_page_range_single_batched: the PTEs
            # (device-private, device-exclusive and swap entries included) are zapped under
            # one MMU_NOTIFY_CLEAR over the VMA's part of the range.
            protected = uffd_shmem.protected_entries(mm, piece_start, piece_end)
            cpu.zap(world, mm_id, mm, piece_start, piece_end)
            mm.markers.update(protected)   # zap_install_uffd_wp_if_needed
            thp.reclaim_empty_tables(mm, piece_start, piece_end)
        elif advice is Advice.FREE:
            # madvise_free_single_vma: MMU_NOTIFY_CLEAR over the VMA's part of the range,
            # then madvise_free_pte_range (reclaim.mark_lazyfree).
            cpu.invalidate(world, mm_id, piece_start, piece_end)
            reclaim.mark_lazyfree(world, mm, piece_start, piece_end)
        elif advice is Advice.WILLNEED and mm.vma_at(piece_start).obj is None:
            # (a shmem VMA: shmem_swapin_range, and nothing of a shmem object is swapped)
            reclaim.willneed(world, mm, piece_start, piece_end)
        # COLD: madvise_cold deactivates folios and clears young bits
        # (clear_young_dirty_ptes, no invalidation): nothing observable.
    if advice is Advice.PAGEOUT:
        worlds = reclaim.pageout(world, mm_id, pieces)
    if einval is not None and mm.vma_at(einval).obj is not None and \
            shmem.madvise_einval(advice, mm.vma_at(einval)):
        expect = fail(EINVAL, f"{shmem.madvise_einval(advice, mm.vma_at(einval))} at "
                              f"{places.name(einval)}; the VMAs before it were advised")
    elif einval is not None:
        expect = fail(EINVAL, f"madvise {advice.value}: {places.name(einval)}'s VMA is "
                              "VM_LOCKED (can_madv_lru_vma / madvise_dontneed_free_valid_vma)"
                              " -> -EINVAL; the VMAs before it were advised")
    elif sum(e - s for s, e in pieces) < end - start:
        expect = _madvise_hole()
    else:
        expect = done(f"madvise {advice.value}: the whole range is mapped")
    return [(expect, w) for w in worlds]


def _madvise_hole() -> Expect:
    # madvise_walk_vmas: unmapped parts make the result -ENOMEM, after the advice was
    # applied to every VMA in the range.
    return fail(ENOMEM, "madvise_walk_vmas: part of the range is not mapped -> -ENOMEM "
                        "(the mapped parts were advised)")


def _madvise_flag(world: World, mm_id: int, mm, start: int, end: int,
                  advice: Advice, places: Places) -> list[Outcome]:
    flag, setting, cleared = _FLAG_ADVICE[advice]
    if advice is Advice.MERGEABLE:
        ksm.madvise_mergeable(world, mm_id, mm, start, end)
    elif advice is Advice.UNMERGEABLE:
        ksm.unmerge(world, mm_id, mm, start, end)

    def update(vma):
        if shmem.ignores_advice(advice, vma):
            return {}
        flags = vma.flags - set(cleared)
        return {"flags": flags | {flag} if setting else flags - {flag}}

    refused = next((vma for vma in vmas.overlaps(mm, start, end)
                    if shmem.madvise_einval(advice, vma)), None)
    stop = end if refused is None else max(start, refused.start)
    err, _, splits = vmas.modify(mm, start, stop, update, world.profile, stop_at_hole=False)
    for vma, vpn in splits:
        cpu.split_pmd(world, mm_id, vma, vpn)
    if refused is not None:
        return [(fail(EINVAL, f"{shmem.madvise_einval(advice, refused)} at "
                              f"{places.name(stop)}; the VMAs before it were advised"), world)]
    if err:
        return [(_madvise_hole(), world)]
    return [(done(f"madvise {advice.value}: madvise_update_vma over the whole range"), world)]


def _populate(world: World, mm_id: int, mm, start: int, end: int, write: bool,
              op: Madvise, places: Places) -> list[Outcome]:
    """madvise_populate -> faultin_page_range: GUP (FOLL_WRITE for POPULATE_WRITE) faults
    the pages in one by one, like a CPU access of that kind, and stops at the first page
    it cannot: __get_user_pages with FOLL_MADV_POPULATE looks up each VMA it enters, no
    VMA -> -ENOMEM, a VMA check_vma_flags refuses (no VM_READ, or no VM_WRITE for a
    write) -> -EINVAL; the pages before it stay populated. (6.1 walks the VMAs instead:
    profile populate_walks_vmas.)"""
    if world.profile.populate_walks_vmas:
        return _populate_vma_by_vma(world, mm_id, mm, start, end, write, op, places)
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        refused = _populate_refused(vma, write, op, places.name(vpn))
        if refused is not None:
            return [(refused, world)]
        cpu.populate_page(world, mm_id, mm, vma, vpn, write)
    return [(done("madvise_populate: every page of the range can be faulted in"), world)]


def _populate_vma_by_vma(world: World, mm_id: int, mm, start: int, end: int, write: bool,
                         op: Madvise, places: Places) -> list[Outcome]:
    """6.1: madvise_walk_vmas visits the VMAs of the range, skipping holes, and
    madvise_populate -> faultin_vma_page_range faults each one in; a VMA check_vma_flags
    refuses ends the walk with -EINVAL; holes make the result -ENOMEM once every VMA was
    populated."""
    for vma in vmas.overlaps(mm, start, end):
        first = max(start, vma.start)
        refused = _populate_refused(vma, write, op, places.name(first))
        if refused is not None:
            return [(refused, world)]
        for vpn in range(first, min(end, vma.end)):
            cpu.populate_page(world, mm_id, mm, vma, vpn, write)
    if any(mm.vma_at(vpn) is None for vpn in range(start, end)):
        return [(_madvise_hole(), world)]
    return [(done("madvise_populate: every VMA of the range could be faulted in"), world)]


def _populate_refused(vma, write: bool, op: Madvise, page: str) -> Expect | None:
    if vma is None:
        return fail(ENOMEM, f"madvise {op.advice.value}: {page} has no VMA "
                            "(vma_lookup) -> -ENOMEM; the pages before it were faulted in")
    if not (vma.prot.writable if write else vma.prot.readable):
        return fail(EINVAL, f"madvise {op.advice.value}: check_vma_flags refuses {page}'s "
                            f"{vma.prot.value} VMA -> -EINVAL; the pages before it were "
                            "faulted in")
    return None


# ------------------------------------------------------------------ mlock

def _mlock(world: World, op, places: Places) -> list[Outcome]:
    """mlock(2): do_mlock -> apply_vma_lock_flags sets VM_LOCKED VMA by VMA (mlock_fixup:
    vma_modify_flags, merge or split; mlock_vma_pages_range marks the present folios
    mlocked, no MMU notifier), then __mm_populate faults the range in:
    populate_vma_page_range uses FOLL_WRITE on a private writable VMA (write faults: COW
    breaks, the zero page is replaced) and a read fault (FOLL_FORCE) otherwise; a PROT_NONE
    VMA makes it -EFAULT, which __mlock_posix_error_return turns into -ENOMEM (the VMAs
    before it were populated)."""
    return _lock(world, op, places, lock=True)


def _munlock(world: World, op, places: Places) -> list[Outcome]:
    """munlock(2): apply_vma_lock_flags clears VM_LOCKED (munlock_folio), nothing else."""
    return _lock(world, op, places, lock=False)


def _lock(world: World, op, places: Places, lock: bool) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)

    def update(vma):
        return {"flags": vma.flags | {"locked"} if lock else vma.flags - {"locked"}}

    err, _, splits = vmas.modify(mm, start, end, update, world.profile, stop_at_hole=True)
    for vma, vpn in splits:
        cpu.split_pmd(world, mm_id, vma, vpn)
    name = "mlock" if lock else "munlock"
    if err:
        return [(fail(err, f"apply_vma_lock_flags: part of the range is not mapped -> -ENOMEM "
                           f"(the VMAs before the hole are {name}ed)"), world)]
    if lock:
        for vpn in range(start, end):
            vma = mm.vma_at(vpn)
            if not vma.prot.readable:
                return [(fail(ENOMEM, f"__mm_populate: {places.name(vpn)}'s VMA is PROT_NONE:"
                                      " populate_vma_page_range -EFAULT -> -ENOMEM"), world)]
            cpu.populate_page(world, mm_id, mm, vma, vpn, shmem.populates_with_write(vma))
    return [(done(f"{name}: the whole range is mapped"), world)]


# ------------------------------------------------------------------ soft-dirty

def _clear_soft_dirty(world: World, op, places: Places) -> list[Outcome]:
    """echo 4 > /proc/self/clear_refs: clear_refs_write (CLEAR_REFS_SOFT_DIRTY) clears
    VM_SOFTDIRTY of every VMA, fires MMU_NOTIFY_SOFT_DIRTY over the whole address space
    (every dmirror of the mm drops its whole table), and clear_soft_dirty write-protects
    every present PTE and clears its soft-dirty bit (swap-like entries: only the bit).
    Afterwards only a write fault makes a page writable again (pte_needs_soft_dirty_wp).
    The same code in 6.1 and 6.12 (clear_refs_write, clear_soft_dirty: "is_swap_pte" is
    7.2's "not none, not present")."""
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    # vma_set_page_prot: a shared VMA now wants writenotify (shmem.prot_writable)
    mm.vmas[:] = [replace(vma, softdirty=False, writenotify=vma.shared) for vma in mm.vmas]
    for mirror in world.mirrors_of(mm_id):
        mirror.table.clear()
    for vpn, pte in list(mm.ptes.items()):
        present = pte.kind in (Kind.PRESENT, Kind.ZERO)
        mm.ptes[vpn] = replace(pte, soft_dirty=False,
                               writable=pte.writable and not present)
    return [(done("clear_refs_write: soft-dirty bits cleared"), world)]


# ------------------------------------------------------------------ compaction

def _compact(world: World, op, places: Places) -> list[Outcome]:
    """echo 1 > /proc/sys/vm/compact_memory: compact_nodes() migrates movable pages of
    every zone; which ones is the kernel's choice (free page layout, per-CPU batches,
    compact_unevictable_allowed lets mlocked ones move too). A folio that moves gets a new
    PFN with its content, PTE bits and PageAnonExclusive kept (migrate_folio,
    remove_migration_pte), and try_to_migrate_one fires MMU_NOTIFY_CLEAR over the page in
    every mm mapping it, erasing the mirror's entry (and, by the dmirror_do_update quirk,
    the next page's). So for every present folio: its PFN is forgotten and those entries
    are marked as maybe gone (resolved by the ops that read them, hmm.settle). The zero
    page, swap and device-private entries do not move, nor do device-coherent pages: they
    are in ZONE_DEVICE, which has no present pages, so compact_node skips it
    (populated_zone), and they are never on the LRU isolate_migratepages_block takes."""
    # (6.x: an entry compaction cannot take, see profile.exclusive_entry_unmapped)
    exclusive = [] if world.profile.exclusive_entry_unmapped else _exclusive_entries(world)
    if len(exclusive) > MAX_EXCLUSIVE_BRANCHES:
        raise Unmodelled(f"compact with more than {MAX_EXCLUSIVE_BRANCHES} device-exclusive "
                         "entries", "whether compaction takes each one is the kernel's choice")
    # 6.1: a dirty page that moves comes back soft-dirty (remove_migration_pte's
    # pte_mkdirty), one that stays does not; which ones move is the kernel's choice, so each
    # such folio branches (only where soft-dirty tracking is on: a VMA without
    # VM_SOFTDIRTY; elsewhere the next clear_soft_dirty resets the bit unseen).
    marked = _soft_dirty_if_moved(world) if world.profile.migration_dirty_sets_soft_dirty \
        else set()
    if len(marked) > MAX_SOFT_DIRTY_BRANCHES:
        raise Unmodelled("compact on 6.1 with many dirty pages whose soft-dirty bit is clear",
                         "whether compaction moves each decides its soft-dirty bit")
    for mm_id, mm in world.mms.items():
        for vpn, pte in list(mm.ptes.items()):
            if not _movable(world, pte):
                continue
            world.pfns.pop(("pfn", pte.folio), None)
            # the rmap walk of a folio that moves: its mappings and maybe other VMAs
            rmap.maybe_unmap_walk(world, mm_id, vpn)
    for folio_id, folio in world.folios.items():
        if folio.swap_slot is not None and folio.mapcount == 0:
            world.pfns.pop(("pfn", folio_id), None)   # an unmapped swap-cache folio moves too
        elif folio.page_cache:
            # page-cache folios move too, mapped or not (shmem folios are movable)
            world.pfns.pop(("pfn", folio_id), None)
    worlds = [world]
    for folio_id in sorted(marked):
        worlds = [branch for w in worlds for branch in (w, _moved_soft_dirty(w, folio_id))]
    for mm_id, vpn in exclusive:
        worlds = [branch for w in worlds for branch in (w, _exclusive_taken(w, mm_id, vpn))]
    return [(done("compact_memory: compaction always reports success"), w) for w in worlds]


MAX_SOFT_DIRTY_BRANCHES = 3
# Each device-exclusive entry compaction may or may not take doubles the states.
MAX_EXCLUSIVE_BRANCHES = 3


def _exclusive_entries(world: World) -> list[tuple[int, int]]:
    """The device-exclusive entries compaction may take: not those of device-coherent pages
    (ZONE_DEVICE is never compacted)."""
    return [(mm_id, vpn) for mm_id, mm in sorted(world.mms.items())
            for vpn, pte in sorted(mm.ptes.items())
            if pte.kind is Kind.EXCLUSIVE and world.folios[pte.folio].device is None]


def _exclusive_taken(world: World, mm_id: int, vpn: int) -> World:
    """Compaction isolated the folio behind a device-exclusive entry (it holds no extra
    reference once make_device_exclusive's caller put it) and unmapped it:
    try_to_migrate_one clears the entry under MMU_NOTIFY_CLEAR over the page (the mirror's
    ATOMIC entry goes, and the next page's by the driver quirk) and stores a readable
    migration entry (softleaf_is_device_private_write is false for it), exclusive if the
    page is PageAnonExclusive, with the entry's soft-dirty and uffd-wp bits. Whether the
    folio then moved or the migration failed and remove_migration_ptes put the old one
    back, remove_migration_pte maps a present PTE: read-only, clean (the migration entry
    was made from a non-present PTE: not dirty), soft-dirty and uffd-wp as the entry had
    them, PageAnonExclusive kept. Its PFN is unknown either way. (6.1's and 6.12's
    try_to_migrate_one read this entry as if it were present: pte_pfn, pte_dirty and
    pte_write of a swap PTE.)"""
    taken = world.clone()
    mm = taken.mms[mm_id]
    pte = mm.ptes[vpn]
    rmap.unmap_walk(taken, mm_id, vpn, [(mm_id, vpn)])
    mm.ptes[vpn] = Pte(Kind.PRESENT, pte.folio, False, clean=True, soft_dirty=pte.soft_dirty,
                       uffd_wp=pte.uffd_wp)
    taken.pfns.pop(("pfn", pte.folio), None)
    return taken


def _soft_dirty_if_moved(world: World) -> set[int]:
    """The folios whose migration would set a PTE's soft-dirty bit that matters (6.1): in a
    VMA with VM_SOFTDIRTY pagemap shows the bit anyway and the next clear_soft_dirty
    clears it, so only PTEs of VMAs without it count (shmem VMAs included)."""
    return {pte.folio for mm in world.mms.values()
            if not all(vma.softdirty for vma in mm.vmas)
            for vpn, pte in mm.ptes.items()
            if _movable(world, pte) and numa.migration_marks_soft_dirty(pte)
            and not mm.vma_at(vpn).softdirty}


def _movable(world: World, pte: Pte) -> bool:
    """A page compaction may migrate: a present folio, not a device-coherent one."""
    return pte.kind is Kind.PRESENT and world.folios[pte.folio].device is None


def _moved_soft_dirty(world: World, folio_id: int) -> World:
    moved = world.clone()
    for mm in moved.mms.values():
        for vpn, pte in mm.ptes.items():
            if pte.folio == folio_id and numa.migration_marks_soft_dirty(pte):
                mm.ptes[vpn] = replace(pte, soft_dirty=True)
    return moved


_STEPS = {
    Map: _map, Munmap: _munmap, Mprotect: _mprotect, CpuWrite: _write, CpuRead: _read,
    Fork: _fork, OpenDevice: _open, DevRead: hmm.dev_read, DevWrite: hmm.dev_write,
    Snapshot: hmm.snapshot, Exclusive: hmm.exclusive, CheckExclusive: hmm.check_exclusive,
    MigrateToDev: device.migrate_to_dev, MigrateToSys: device.migrate_to_sys,
    Release: device.release, Flags: device.flags, CloseDevice: device.close,
    Exit: device.exit_process, Madvise: _madvise, Pagemap: pagemap.pagemap,
    Mlock: _mlock, Munlock: _munlock, Mremap: remap.mremap,
    ClearSoftDirty: _clear_soft_dirty, Compact: _compact,
    MovePages: numa.move_pages, Mbind: numa.mbind, Thp: thp.set_mode, KsmMerge: ksm.ksm_merge,
    Smaps: smaps.smaps, UffdRegister: uffd.register, UffdUnregister: uffd.unregister,
    UffdWriteprotect: uffd.writeprotect,
}


def _refuse_on_backed(op: Op, world: World, places: Places) -> None:
    """Cases of ops over shmem or file mappings the model does not follow."""
    if isinstance(op, Mbind):
        start, end = places.vpns(op.range)
        shmem.refuse_mbind(world.mms[world.procs[op.proc]], start, end)
    elif isinstance(op, Mremap):
        start, end = places.vpns(op.range)
        shmem.refuse_mremap(world.mms[world.procs[op.proc]], op, start, end)


def step(world: World, op: Op, places: Places) -> list[Outcome]:
    """The allowed outcomes of `op`; raises Unmodelled for an op (or a case of one) the
    model does not model (shared mappings under some ops, uffd, ...)."""
    function = _STEPS.get(type(op))
    if function is None:
        raise Unmodelled(op.keyword)
    device_thp.guard(world, op, places)
    coherent.guard(world, op, places)
    thp.guard(world, op, places)
    uffd.refuse_unfollowed(world, op, places)
    thp.note_tables(world)
    if world.objects:
        _refuse_on_backed(op, world, places)
    try:
        outcomes = thp.with_allocation_choices(world, lambda w: function(w, op, places),
                                               always=collapse.allocates(op))
    except UffdWriteProtected as fault:
        # A write fault on a uffd-wp page where the op does not state the outcome (GUP of
        # populate_write, mlock or mprotect's populate): VM_FAULT_SIGBUS -> -EFAULT there.
        raise Unmodelled(f"{op.keyword} with a GUP write fault on a uffd-wp page",
                         f"{fault}: -EFAULT from populate is not stated") from None
    if world.objects:
        for _, after in outcomes:
            shmem.forget_unreachable(after)
    return outcomes
