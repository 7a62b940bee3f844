"""The dmirror ioctls (lib/test_hmm.c) and the hmm_range_fault() walk under them (mm/hmm.c).

Every device op acts on the mm the fd mirrors (the opener's), whichever process issues it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from harness.prog import Content

from . import device_thp, reclaim, shmem, thp, uapi
from .expect import ANY_BYTES, EBUSY, EFAULT, EINVAL, EOPNOTSUPP, EPERM, Expect, fail, read_page
from .mm import invalidate, read_fault, write_fault
from .places import Places
from .refuse import Unmodelled
from .state import STALE, Dmirror, Entry, Kind, Pte, Tag, World
from .uffd_wp import UffdWriteProtected

Outcome = tuple[Expect, World]


def _mirror(world: World, proc: str, fd: str) -> tuple[int, Dmirror]:
    mirror_id = world.fds[(proc, fd)]
    return mirror_id, world.mirrors[mirror_id]


# ------------------------------------------------------------------ hmm_range_fault

def hmm_range_fault(world: World, mirror: Dmirror, start: int, end: int, write: bool,
                    places: Places) -> tuple[int, str]:
    """hmm_range_fault with HMM_PFN_REQ_FAULT (| HMM_PFN_REQ_WRITE): fault in every page of
    [start, end) that is not valid (or not writable for a write), in address order, and stop
    at the first page that cannot be made valid: (errno, why)."""
    mm_id = mirror.mm
    mm = world.mms[mm_id]
    vpn = start
    while vpn < end:
        vma = mm.vma_at(vpn)
        if vma is None:
            return EFAULT, (f"hmm_vma_walk_hole: {places.name(vpn)} has no VMA and a fault is "
                            "required -> -EFAULT")
        if not vma.prot.readable:
            return EFAULT, (f"hmm_vma_walk_test: {places.name(vpn)} is in a VMA without "
                            "VM_READ and a fault is required -> -EFAULT")
        stop = min(end, vma.end)
        for page in range(vpn, stop):
            pte = mm.ptes.get(page)
            if pte is not None and pte.kind is Kind.DEVICE and \
                    world.folios[pte.folio].device == mirror.device:
                # hmm_vma_handle_pte reports a device-private page of the caller's own device
                # as valid without faulting (even for a write on a read-only entry), and
                # dmirror_do_fault then stores the ZONE_DEVICE page itself, which
                # dmirror_do_read would memcpy from: the model does not say what that does.
                raise Unmodelled("a device fault on a device-private page of the same device")
            if pte is not None and pte.kind in (Kind.ZERO, Kind.PRESENT) and \
                    (pte.writable or not write):
                continue  # hmm_pte_need_fault: valid (and writable if asked)
            if write and not vma.prot.writable:
                return EPERM, (f"hmm_vma_fault: {places.name(page)} needs a write fault in a "
                               "VMA without VM_WRITE -> -EPERM")
            if write:
                try:
                    write_fault(world, mm_id, mm, vma, page)
                except UffdWriteProtected:
                    return EFAULT, (f"hmm_vma_fault: the write fault on {places.name(page)} "
                                    "meets its uffd-wp bit: handle_userfault -> "
                                    "VM_FAULT_SIGBUS -> -EFAULT")
            else:
                read_fault(world, mm_id, mm, vma, page)
        vpn = stop
    return 0, ""


def dmirror_fault(world: World, mirror: Dmirror, start: int, end: int, write: bool,
                  places: Places) -> tuple[int, str]:
    """dmirror_fault: per chunk of ARRAY_SIZE(pfns) pages (32; 64 before 7.x, see
    profile.py), hmm_range_fault then dmirror_do_fault stores one entry per page, tagged
    WRITE iff the CPU PTE is writable (HMM_PFN_WRITE). A failing chunk stores nothing, but
    the chunks before it stay mirrored and the CPU faults it already took stay done."""
    if not world.mms[mirror.mm].alive:
        return EFAULT, ("dmirror_fault: mmget_not_zero() fails, the mirrored process has "
                        "exited -> -EFAULT")
    ptes = world.mms[mirror.mm].ptes
    size = world.profile.fault_chunk
    for chunk in range(start, end, size):
        chunk_end = min(chunk + size, end)
        err, why = hmm_range_fault(world, mirror, chunk, chunk_end, write, places)
        if err:
            return err, why
        for vpn in range(chunk, chunk_end):
            pte = ptes[vpn]
            mirror.table[vpn] = Entry(pte.folio, Tag.WRITE if pte.writable else Tag.READ)
    return 0, ""


# ------------------------------------------------------------------ READ

def settle(world: World, mirror_id: int, start: int, end: int,
           stops: Callable[[Entry | None], bool],
           refilled: Callable[[int, Entry], bool] | None = None) -> list[World]:
    """The states an op that scans this mirror's entries over [start, end) in address order,
    stopping at the first entry for which `stops` holds (None: no entry), can be in, given
    the entries that may or may not have been erased (Entry.maybe_gone, see
    mm._write_protected_anon). An uncertain entry matters only if being there or not changes
    whether the scan stops; for each such entry before the first certain stop, one state
    has it resolved the stopping way and the earlier ones the passing way, and one more
    state has them all passing. Without such entries: [world] itself, uncopied.

    `refilled(vpn, entry)`: the op re-mirrors everything from its first stop on, and would
    store this very entry again at vpn (dmirror_read/dmirror_write fault the rest of the
    range in). When that holds for every deciding entry, the states "stopped at the k-th"
    differ only in entries the model keeps as maybe gone in the first of them, so that one
    stands for all (a superset), and two states are returned instead of one per entry
    (after a compaction every mirrored page is uncertain)."""
    table = world.mirrors[mirror_id].table
    deciding = []
    for vpn in range(start, end):
        entry = table.get(vpn)
        stop = stops(entry)
        if entry is not None and entry.maybe_gone and stops(None) != stop:
            deciding.append((vpn, stop))
        elif stop:
            break
    if not deciding:
        return [world]
    stops_at = range(len(deciding) + 1)
    if refilled is not None and all(refilled(vpn, table[vpn]) for vpn, _ in deciding):
        stops_at = (0, len(deciding))
    worlds = []
    for stop_at in stops_at:
        branch = world.clone()
        table = branch.mirrors[mirror_id].table
        for n, (vpn, kept_stops) in enumerate(deciding[:stop_at + 1]):
            stop_here = n == stop_at
            if kept_stops == stop_here:
                table[vpn] = replace(table[vpn], maybe_gone=False)
            else:
                del table[vpn]
        worlds.append(branch)
    return worlds


def dev_read(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_READ. Deterministic unless an entry in the range may or may not have been
    erased (Entry.maybe_gone); then each possible first erased entry is its own outcome."""
    mirror_id, _ = _mirror(world, op.proc, op.fd)
    start, end = places.vpns(op.range)
    return [(_dev_read(w, w.mirrors[mirror_id], start, end, places), w)
            for w in settle(world, mirror_id, start, end, _missing,
                            _refill_same(world, mirror_id, write=False))]


def _refill_same(world: World, mirror_id: int, write: bool) -> Callable[[int, Entry], bool]:
    """Would dmirror_fault store this entry again? A present PTE (or, for a read, the zero
    page) needs no CPU fault to be valid (and writable for a write); dmirror_do_fault then
    stores its folio, WRITE iff the PTE is writable."""
    mirror = world.mirrors[mirror_id]
    ptes = world.mms[mirror.mm].ptes

    def same(vpn: int, entry: Entry) -> bool:
        pte = ptes.get(vpn)
        if pte is None or pte.folio != entry.folio:
            return False
        if pte.kind is not Kind.PRESENT and (write or pte.kind is not Kind.ZERO):
            return False
        if write and not pte.writable:
            return False
        return entry.tag is (Tag.WRITE if pte.writable else Tag.READ)

    return same


def _missing(entry: Entry | None) -> bool:
    return entry is None


def _not_writable(entry: Entry | None) -> bool:
    return entry is None or entry.tag is not Tag.WRITE


def _atomic(entry: Entry | None) -> bool:
    return entry is not None and entry.tag is Tag.ATOMIC


def _dev_read(world: World, mirror: Dmirror, start: int, end: int, places: Places) -> Expect:
    """dmirror_read: copy mirrored pages from `start` until the first missing entry, fault
    the rest of the range in (faults++), and copy again from there."""
    pages, page_why = [], []
    faults, first_missing = 0, None
    pos = start
    while True:
        missing = None
        for vpn in range(pos, end):  # dmirror_do_read
            entry = mirror.table.get(vpn)
            if entry is None:
                missing = vpn
                break
            if entry.folio == STALE:
                pages.append(ANY_BYTES)
                page_why.append(STALE_READ_WHY)
                continue
            content = world.content(entry.folio)
            pages.append(read_page(content))
            page_why.append(f"dmirror_do_read copies the mirrored page, which holds {content}")
        if missing is None:
            break
        if first_missing is None:
            first_missing = missing
        err, why = dmirror_fault(world, mirror, missing, end, False, places)
        if err:
            return fail(err, why)
        faults += 1
        pos = missing
    return Expect(
        cpages=(end - start,), faults=(faults,), pages=tuple(pages), page_why=tuple(page_why),
        why={"errno": "hmm_range_fault can make every page of the range valid: all of it is "
                      "mapped and readable",
             "faults": _faults_why("dmirror_read", faults, first_missing, places),
             "cpages": "dmirror_read: every page of the range is copied on success",
             "pages": "dmirror_read copies every page of the range"})


# docs/findings.md #4, stated as the kernel behaves until it is fixed: the entry still
# points at the backing page dmirror_devmem_free() freed, and reading it is harmless.
STALE_READ_WHY = ("dmirror_do_read copies through a stale entry (docs/findings.md #4): the "
                  "backing page was freed when another dmirror of the device migrated the "
                  "page back, so its bytes are whatever the allocator's next user left")


def _refuse_stale(entry: Entry) -> None:
    """A device write through a stale entry corrupts freed memory (docs/findings.md #4):
    what follows is not the model's to say."""
    if entry.folio == STALE:
        raise Unmodelled("a device write through the entry of a freed page",
                         "another dmirror of the device migrated the page (state.STALE)")


def _faults_why(fn: str, faults: int, first_missing: int | None, places: Places) -> str:
    if not faults:
        return (f"{fn}: every page of the range is in the mirror (nothing invalidated it since "
                "it was mirrored), so no dmirror_fault")
    return (f"{fn}: {places.name(first_missing)} is not (suitably) in the mirror -> one "
            "dmirror_fault for the rest of the range")


# ------------------------------------------------------------------ WRITE

def dev_write(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_WRITE: like READ, but an entry counts only if it is WRITE-tagged
    (dmirror_do_write), faults are write faults, and the device stores pattern(seed, vpn).
    A failing fault leaves the pages written before it written. The runner reports no pages.
    Uncertain WRITE entries branch as in dev_read (settle)."""
    mirror_id, _ = _mirror(world, op.proc, op.fd)
    start, end = places.vpns(op.range)
    return [(_dev_write(w, w.mirrors[mirror_id], op.seed, start, end, places), w)
            for w in settle(world, mirror_id, start, end, _not_writable,
                            _refill_same(world, mirror_id, write=True))]


def _dev_write(world: World, mirror: Dmirror, seed: int, start: int, end: int,
               places: Places) -> Expect:
    table = mirror.table
    faults, first_missing = 0, None
    pos = start
    while True:
        missing = None
        for vpn in range(pos, end):
            entry = table.get(vpn)
            if entry is None or entry.tag is not Tag.WRITE:
                missing = vpn
                break
            _refuse_stale(entry)
            world.set_content(entry.folio, Content(seed, vpn))
        if missing is None:
            break
        if first_missing is None:
            first_missing = missing
        err, why = dmirror_fault(world, mirror, missing, end, True, places)
        if err:
            return fail(err, why)
        faults += 1
        pos = missing
    return Expect(cpages=(end - start,), faults=(faults,),
                  why={"errno": "hmm_range_fault can make every page of the range valid and "
                                "writable: all of it is mapped with VM_WRITE",
                       "faults": _faults_why("dmirror_write", faults, first_missing, places),
                       "cpages": "dmirror_write: every page of the range is written",
                       "pages": "the runner reports no pages for a device write"})


# ------------------------------------------------------------------ SNAPSHOT

def snapshot(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_SNAPSHOT: hmm_range_fault without fault flags never faults and never
    fails; dmirror_mkentry turns each result into a byte."""
    _, mirror = _mirror(world, op.proc, op.fd)
    start, end = places.vpns(op.range)
    mm = world.mms[mirror.mm]
    if not mm.alive:
        return [(fail(EINVAL, "dmirror_snapshot: mmget_not_zero() fails, the mirrored "
                              "process has exited -> -EINVAL"), world)]
    data = bytes(device_thp.snapshot_byte(world, mirror, mm, vpn, thp.snapshot_byte(
                     mm, vpn, _snapshot_byte(world, mirror, mm.vma_at(vpn), mm.ptes.get(vpn))))
                 for vpn in range(start, end))
    return [(Expect(cpages=(end - start,), faults=(0,), snapshot=data, why={
        "errno": "dmirror_snapshot: hmm_range_fault without fault flags does not fail",
        "pages": "a snapshot reports protection bytes, not pages",
        "snapshot": "dmirror_mkentry of hmm_range_fault without HMM_PFN_REQ_FAULT",
        "faults": "dmirror_snapshot never counts faults",
        "cpages": "dmirror_snapshot: cpages += n for every chunk"}), world)]


def _device_byte(world: World, mirror: Dmirror, pte: Pte) -> int:
    """hmm_vma_handle_pte: a device-private entry of the caller's device is valid (writable
    iff the entry is) and dmirror_mkentry says DEV_PRIVATE_LOCAL (the page's device is the
    caller's: LOCAL); another device's entry needs no fault and is not valid: NONE."""
    if world.folios[pte.folio].device != mirror.device:
        return uapi.PROT_NONE
    return uapi.PROT_DEV_PRIVATE_LOCAL | (uapi.PROT_WRITE if pte.writable else uapi.PROT_READ)


def _snapshot_byte(world: World, mirror: Dmirror, vma, pte: Pte | None) -> int:
    if vma is None or not vma.prot.readable:
        # hmm_vma_walk_hole without a VMA / hmm_vma_walk_test on a VMA without VM_READ:
        # HMM_PFN_ERROR when no fault is required.
        return uapi.PROT_ERROR
    if pte is not None and pte.kind is Kind.DEVICE:
        return _device_byte(world, mirror, pte)
    if pte is None or pte.kind in (Kind.EXCLUSIVE, Kind.SWAP):
        # pte_none, or a non-present entry that need not be faulted (hmm_vma_handle_pte):
        # no HMM_PFN_VALID.
        return uapi.PROT_NONE
    if pte.kind is Kind.ZERO:
        return uapi.PROT_ZERO | uapi.PROT_READ
    access = uapi.PROT_WRITE if pte.writable else uapi.PROT_READ
    device = world.folios[pte.folio].device
    if device is not None:
        # dmirror_mkentry: is_device_coherent_page(), LOCAL when the page's pgmap owner is
        # this dmirror's device, REMOTE for any other (a device-private one too)
        return access | (uapi.PROT_DEV_COHERENT_LOCAL if device == mirror.device
                         else uapi.PROT_DEV_COHERENT_REMOTE)
    return access


# ------------------------------------------------------------------ EXCLUSIVE

def exclusive(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_EXCLUSIVE: dmirror_exclusive calls make_device_exclusive (mm/rmap.c) on each
    page, then dmirror_atomic_map stores an ATOMIC entry; after the loop the range is read
    back from the mirror. A failing page stops the loop; earlier pages stay exclusive.
    Older kernels work in batches (profile.exclusive_batch)."""
    _, mirror = _mirror(world, op.proc, op.fd)
    start, end = places.vpns(op.range)
    if not world.mms[mirror.mm].alive:
        return [(fail(EINVAL, "dmirror_exclusive: mmget_not_zero() fails, the mirrored "
                              "process has exited -> -EINVAL"), world)]
    batch = world.profile.exclusive_batch
    for first in range(start, end, batch or 1):
        last = min(first + (batch or 1), end)
        made, got, err, why = _make_exclusive(world, mirror, first, last, places)
        if got == last:
            # dmirror_atomic_map: the pages made exclusive (6.x: the non-NULL pages[])
            for vpn in made:
                mirror.table[vpn] = Entry(world.mms[mirror.mm].ptes[vpn].folio, Tag.ATOMIC)
        if got == last and len(made) == last - first:
            continue
        if batch:
            # make_device_exclusive_range made only part of the batch exclusive (or failed):
            # dmirror_exclusive returns -EBUSY (6.x maps the exclusive ones if GUP got all).
            return [(fail(EBUSY, f"dmirror_exclusive: make_device_exclusive_range could not "
                                 f"take the whole batch ({why}) -> -EBUSY"), world)]
        return [(fail(err, why), world)]
    contents = [world.content(mirror.table[vpn].folio) for vpn in range(start, end)]
    return [(Expect(
        cpages=(end - start,), faults=(0,), pages=tuple(read_page(c) for c in contents),
        page_why=tuple(f"dmirror_do_read of the atomic entry: the page holds {c}"
                       for c in contents),
        why={"errno": "make_device_exclusive succeeds on every page: all of it is mapped with "
                      "VM_WRITE",
             "faults": "dmirror_exclusive never counts faults",
             "cpages": "dmirror_exclusive reads back every page",
             "pages": "dmirror_exclusive reads back every page"}), world)]


def _make_exclusive(world: World, mirror: Dmirror, start: int, end: int,
                    places: Places) -> tuple[list[int], int, int, str]:
    """get_user_pages_remote(FOLL_WRITE) faults the pages in writable, in order, up to the
    first it cannot (no VMA, or no VM_WRITE: check_vma_flags -> -EFAULT); each page it got
    is then made device-exclusive: MMU_NOTIFY_EXCLUSIVE (owner NULL, so every dmirror of the
    mm drops it), and the PTE becomes a (writable) device-exclusive entry. A page-cache
    folio (shmem.py) is not anonymous: 7.2 make_device_exclusive returns -EOPNOTSUPP for it
    after GUP faulted it in; 6.x page_make_device_exclusive skips it (returns false before
    the rmap walk, no notifier) and goes on with the batch.
    Returns (the pages made exclusive, the first page GUP did not get, errno, why)."""
    mm_id = mirror.mm
    mm = world.mms[mm_id]
    got, err, why = end, 0, ""
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        if vma is None or not vma.prot.writable:
            got, err = vpn, EFAULT
            why = (f"get_user_pages_remote finds no VMA at {places.name(vpn)} -> -EFAULT"
                   if vma is None else
                   f"check_vma_flags refuses FOLL_WRITE on {places.name(vpn)}'s VMA without "
                   "VM_WRITE -> -EFAULT")
            break
        # FOLL_SPLIT_PMD: follow_pmd_mask splits a PMD mapping before it looks further,
        # both the one it finds and the one the fault maps.
        thp.gup_split_pmd(world, mm_id, mm, vpn)
        try:
            write_fault(world, mm_id, mm, vma, vpn)
        except UffdWriteProtected:
            got, err = vpn, EFAULT
            why = (f"the FOLL_WRITE fault on {places.name(vpn)} meets its uffd-wp bit: "
                   "handle_userfault -> VM_FAULT_SIGBUS -> -EFAULT")
            break
        thp.gup_split_pmd(world, mm_id, mm, vpn)
        if world.folios[mm.ptes[vpn].folio].page_cache:
            # GUP with FOLL_WRITE | FOLL_TOUCH marks the folio dirty (follow_page_pte)
            shmem.mark_dirty(world, mm.ptes[vpn].folio)
        if world.folios[mm.ptes[vpn].folio].page_cache and not world.profile.exclusive_batch:
            # (a shared mapping's write fault keeps the page-cache folio; a private one
            # COWed it into an anonymous folio, which goes on)
            got, err = vpn, EOPNOTSUPP
            why = f"{places.name(vpn)} is a shmem page-cache folio, not anonymous -> -EOPNOTSUPP"
            break
    made = [vpn for vpn in range(start, got) if not world.folios[mm.ptes[vpn].folio].page_cache]
    if len(made) < got - start and not why:
        why = "a shmem page-cache folio is not anonymous: page_make_device_exclusive skips it"
    for vpn in made:
        # GUP's dirtying and restore_exclusive_pte's are not followed for lazyfree folios.
        reclaim.lost_track(world, mm.ptes[vpn].folio)
        invalidate(world, mm_id, vpn, vpn + 1)
        present = mm.ptes[vpn]
        mm.ptes[vpn] = Pte(Kind.EXCLUSIVE, present.folio, True,
                           soft_dirty=present.soft_dirty)  # pte_swp_mksoft_dirty
    return made, got, err, f"make_device_exclusive: {why}" if why else ""


def check_exclusive(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_CHECK_EXCLUSIVE: dmirror_check_atomic looks only at this fd's table.
    Uncertain ATOMIC entries branch as in dev_read (settle)."""
    mirror_id, _ = _mirror(world, op.proc, op.fd)
    start, end = places.vpns(op.range)
    return [(_check_exclusive(w, w.mirrors[mirror_id], start, end, places), w)
            for w in settle(world, mirror_id, start, end, _atomic)]


def _check_exclusive(world: World, mirror: Dmirror, start: int, end: int,
                     places: Places) -> Expect:
    for vpn in range(start, end):
        entry = mirror.table.get(vpn)
        if entry is not None and entry.tag is Tag.ATOMIC:
            return fail(EPERM, f"dmirror_check_atomic: {places.name(vpn)} still has an "
                               "ATOMIC entry (no CPU access or invalidation revoked it) "
                               "-> -EPERM")
    why = ("dmirror_check_atomic: no ATOMIC entry in the range (none was made, or a CPU "
           "fault or an invalidation erased it)")
    return Expect(cpages=(0,), faults=(0,), why={
        "errno": why, "cpages": "CHECK_EXCLUSIVE leaves cpages at 0",
        "faults": "CHECK_EXCLUSIVE leaves faults at 0"})
