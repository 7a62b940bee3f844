"""Device-private memory: HMM_DMIRROR_MIGRATE_TO_DEV / _TO_SYS, the CPU fault that brings a
device page back (dmirror_devmem_fault), eviction (HMM_DMIRROR_RELEASE and the last close of
a dmirror fd), HMM_DMIRROR_FLAGS; and the lifetime ops `close` and `exit`.

Sources: lib/test_hmm.c and mm/migrate_device.c (7.2). A device page is a folio with
`device` set; its content stands for the backing system page the test driver copies into
(BACKING_PAGE, dpage->zone_device_data). Cases the model does not know raise Unmodelled.
"""

from __future__ import annotations

from dataclasses import replace

from .expect import EINVAL, ENOENT, ENOMEM, Expect, done, fail, read_page
from .mm import invalidate, zap
from .places import Places
from .refuse import Unmodelled
from .uapi import FAIL_ALLOC
from .state import STALE, ZERO_FOLIO, Entry, Folio, Kind, Lazyfree, Mm, Pte, Tag, World
from . import device_thp, vma as vmas

Outcome = tuple[Expect, World]

MIGRATE_CHUNK = 512     # PTRS_PER_PTE: dmirror_migrate_to_{device,system} work per chunk


# ------------------------------------------------------------------ helpers

def _stale_other_entries(world: World, mm_id: int, keeper: int | None, vpn: int,
                         folio: int) -> None:
    """Entries of other dmirrors of `mm_id` that still point at `folio` (which is about to
    be freed) at `vpn` become STALE (see state.STALE)."""
    for mirror_id, mirror in world.mirrors.items():
        if mirror_id == keeper or mirror.mm != mm_id:
            continue
        entry = mirror.table.get(vpn)
        if entry is not None and entry.folio == folio:
            mirror.table[vpn] = replace(entry, folio=STALE)


def _free_folio(world: World, folio_id: int) -> None:
    if folio_id != ZERO_FOLIO:
        world.folios.pop(folio_id, None)


def _back_to_system(world: World, mm: Mm, vpn: int, node: int,
                    others: list[tuple[Mm, int]] = ()) -> None:
    """remove_migration_ptes(device folio -> new system folio on `node`): the PTE maps a
    new folio with the device entry's write permission (a writable migration entry maps
    writable); RMAP_EXCLUSIVE unless the entry was a plain readable one, i.e.
    PageAnonExclusive carries over (remove_migration_pte). `others`: the other mappings
    try_to_migrate() unmapped (after fork), remapped to the same new folio."""
    pte = mm.ptes[vpn]
    old = world.folios[pte.folio]
    new = world.new_folio(old.content)
    world.folios[new] = Folio(old.content, 1 + len(others), old.exclusive,
                              lazyfree=old.lazyfree, node=node)
    # remove_migration_pte: writable iff the migration entry was, the soft-dirty bit
    # carried over (no pte_needs_soft_dirty_wp check on this path); clean, as the migration
    # entry made from a device-private one is never dirty (migrate_vma_collect_pmd, and
    # try_to_migrate_one for the other mappings: pte_swp_soft_dirty/_uffd_wp only). The
    # uffd-wp bit rides along too (migrate_vma_collect_pmd: pte_swp_mkuffd_wp into the
    # migration entry; remove_migration_pte: pte_mkuffd_wp).
    for where, page in [(mm, vpn), *others]:
        entry = where.ptes[page]
        where.ptes[page] = Pte(Kind.PRESENT, new, entry.writable, clean=True,
                               soft_dirty=entry.soft_dirty, uffd_wp=entry.uffd_wp)
    del world.folios[pte.folio]


def _shared_device_page(world: World, vpn: int, folio: Folio, what: str) -> None:
    if folio.mapcount > 1:
        # migrate_device_unmap() -> try_to_migrate() fires MMU_NOTIFY_CLEAR in every other
        # mm mapping the folio and remaps them all (remove_migration_ptes); the model
        # follows that only for a CPU fault (_fault_shared_device_page).
        raise Unmodelled(what, "a device-private page mapped by several processes")


def _other_mappings(world: World, mm_id: int, folio_id: int) -> list[tuple[int, int]]:
    """(mm, vpn) of every other PTE mapping the device folio (after fork)."""
    return [(other_id, vpn) for other_id, other in world.mms.items() if other_id != mm_id
            for vpn, pte in other.ptes.items()
            if pte.kind is Kind.DEVICE and pte.folio == folio_id]


def _fault_shared_device_page(world: World, mm_id: int, vpn: int,
                              others: list[tuple[int, int]]) -> None:
    """The other mappings of a device folio a CPU fault brings back (after fork).

    migrate_vma_collect_pmd unmaps the faulting PTE itself (a migration entry,
    folio_remove_rmap_pte); migrate_device_unmap then finds the folio still mapped and calls
    try_to_migrate(): rmap_walk_anon visits the VMAs of the folio's anon_vma in interval-tree
    order, and try_to_migrate_one fires MMU_NOTIFY_CLEAR over the page in each VMA it visits
    (mmu_notifier_invalidate_range_start comes before page_vma_mapped_walk) and replaces
    each mapping by a migration entry, until folio_not_mapped stops the walk.
    remove_migration_ptes then maps the new system folio in every one of them.

    Every process mapping the page gets the CLEAR at its address (+1: the dmirror_do_update
    quirk). The faulting process's own VMA is visited or not depending on where it sits in
    the interval tree relative to the last mapping, so its dmirrors' entries there may or
    may not go (Entry.maybe_gone, resolved by the ops that read them: hmm.settle). A process
    that maps the page no more but still has a VMA in the anon_vma could get the CLEAR too,
    at an address the model does not follow: refused when such a process has a mirror
    entry anywhere."""
    mapping = {other_id for other_id, _ in others}
    for other_id, other in world.mms.items():
        if other_id in mapping or other_id == mm_id or not other.alive:
            continue
        if any(mirror.table for mirror in world.mirrors_of(other_id)):
            raise Unmodelled("a CPU fault on a device-private page mapped by several "
                             "processes while another process has mirror entries",
                             "try_to_migrate may fire MMU_NOTIFY_CLEAR in its VMAs")
    for other_id, other_vpn in others:
        invalidate(world, other_id, other_vpn, other_vpn + 1)
    for mirror in world.mirrors_of(mm_id):
        for page in (vpn, vpn + 1):
            entry = mirror.table.get(page)
            if entry is not None:
                mirror.table[page] = replace(entry, maybe_gone=True)


# ------------------------------------------------------------------ CPU fault

def devmem_fault(world: World, mm_id: int, mm: Mm, vpn: int) -> None:
    """do_swap_page on a device-private entry -> dmirror_devmem_fault: migrate this one page
    (vmf->pte set: order 0) back to system memory.

    dmirror_devmem_fault_alloc_and_copy works for the dmirror that migrated the page
    (rpage->zone_device_data): it erases that dmirror's entry for the page (xa_erase, this
    page only) and, with that dmirror's FAIL_ALLOC set, returns VM_FAULT_OOM. The collect
    step raises MMU_NOTIFY_MIGRATE with the page's device as owner: dmirrors of that device
    ignore it, the others erase the page (and, by the dmirror_do_update quirk, the next)."""
    if device_thp.devmem_fault(world, mm_id, mm, vpn):
        return
    pte = mm.ptes[vpn]
    folio = world.folios[pte.folio]
    others = _other_mappings(world, mm_id, pte.folio) if folio.mapcount > 1 else []
    if len(others) != folio.mapcount - 1:
        _shared_device_page(world, vpn, folio, "a CPU fault on a device-private page")
    owner = world.mirrors.get(folio.owner)
    if owner is not None and owner.flags & FAIL_ALLOC:
        raise Unmodelled("a CPU fault on a device-private page with FAIL_ALLOC set",
                         "dmirror_devmem_fault returns VM_FAULT_OOM")
    if owner is not None:
        owner.table.pop(vpn, None)
    invalidate(world, mm_id, vpn, vpn + 1, migrating_device=folio.device)
    _stale_other_entries(world, mm_id, folio.owner, vpn, pte.folio)
    if others:
        _fault_shared_device_page(world, mm_id, vpn, others)
    # dmirror_devmem_fault_alloc_and_copy: alloc_page_vma, by the VMA's policy
    _back_to_system(world, mm, vpn, vmas.alloc_node(mm.vma_at(vpn)),
                    [(world.mms[other_id], other_vpn) for other_id, other_vpn in others])


# ------------------------------------------------------------------ MIGRATE_TO_DEV

def _chunks(mm: Mm, start: int, end: int):
    """dmirror_migrate_to_*: [addr, next) pieces of at most PTRS_PER_PTE pages, cut at the
    end of the VMA found at addr; None for a piece with no VMA or no VM_READ (-EINVAL)."""
    addr = start
    while addr < end:
        vma = mm.vma_at(addr)
        if vma is None or not vma.prot.readable:
            yield addr, None, None
            return
        nxt = min(end, addr + MIGRATE_CHUNK, vma.end)
        yield addr, nxt, vma
        addr = nxt


def migrate_to_dev(world: World, op, places: Places) -> list[Outcome]:
    mirror_id = world.fds[(op.proc, op.fd)]
    mirror = world.mirrors[mirror_id]
    start, end = places.vpns(op.range)
    mm = world.mms[mirror.mm]
    if not mm.alive:
        return [(fail(EINVAL, "dmirror_migrate_to_device: mmget_not_zero() fails, the "
                              "mirrored process has exited -> -EINVAL"), world)]
    for addr, nxt, vma in _chunks(mm, start, end):
        if vma is None:
            return [(fail(EINVAL, f"dmirror_migrate_to_device: vma_lookup finds no readable "
                                  f"VMA at {places.name(addr)} -> -EINVAL (earlier pieces "
                                  "stay migrated)"), world)]
        _migrate_piece_to_dev(world, mirror_id, mm, vma, addr, nxt, places)
    # dmirror_do_read of the whole range from the mirror table.
    pages, why = [], []
    for vpn in range(start, end):
        entry = mirror.table.get(vpn)
        if entry is None:
            return [(fail(ENOENT, f"dmirror_migrate_to_device: {places.name(vpn)} was not "
                                  "migrated and is not in the mirror, so dmirror_do_read "
                                  "returns -ENOENT"), world)]
        if entry.folio == STALE:
            raise Unmodelled("a device read of a freed page",
                             "the entry outlived its page (state.STALE)")
        if entry.maybe_gone:
            raise Unmodelled("migrate_to_dev over a possibly erased mirror entry")
        content = world.content(entry.folio)
        pages.append(read_page(content))
        why.append(f"the mirror entry holds {content}")
    n = end - start
    return [(Expect(cpages=(n,), faults=(0,), pages=tuple(pages), page_why=tuple(why), why={
        "errno": "every page of the range is migrated or already in the mirror, so "
                 "dmirror_do_read succeeds",
        "cpages": "dmirror_migrate_to_device reports bounce.cpages: every page read back",
        "faults": "dmirror_migrate_to_device never counts faults",
        "pages": "dmirror_do_read copies each page from the mirror"}), world)]


def _migrate_piece_to_dev(world: World, mirror_id: int, mm: Mm, vma, start: int, end: int,
                          places: Places) -> None:
    """migrate_vma_setup (MIGRATE_VMA_SELECT_SYSTEM) + dmirror_migrate_alloc_and_copy +
    migrate_vma_pages + dmirror_migrate_finalize_and_map + migrate_vma_finalize."""
    mirror = world.mirrors[mirror_id]
    mm_id = mirror.mm
    ptes = mm.ptes
    if device_thp.migrate_piece_to_dev(world, mirror_id, mm, vma, start, end):
        # the whole aligned 2 MiB as one entry (MIGRATE_VMA_SELECT_COMPOUND), device_thp.py;
        # otherwise the THPs the piece meets in part are split and it goes page by page
        return
    # migrate_vma_collect: one MMU_NOTIFY_MIGRATE over the piece, owner = this device.
    invalidate(world, mm_id, start, end, migrating_device=mirror.device)
    for vpn in range(start, end):
        pte = ptes.get(vpn)
        if pte is not None and pte.kind in (Kind.DEVICE, Kind.EXCLUSIVE, Kind.SWAP):
            # migrate_vma_collect_pmd: a non-present entry that is not device-private of a
            # selected owner (SELECT_SYSTEM selects none) is skipped ("we ignore regular
            # swapped page").
            continue
        if pte is not None and pte.kind is Kind.PRESENT:
            folio = world.folios[pte.folio]
            if folio.ksm:
                raise Unmodelled("migrate_to_dev of a KSM page",
                                 "the KSM folio moves, stable node and all, to device "
                                 "memory, and a later KSM scan oopses (docs/findings.md #12)")
            if folio.mapcount > 1:
                # try_to_migrate() of the other mappings: see _shared_device_page.
                raise Unmodelled("migrate_to_dev of a page mapped by several processes")
            if folio.swap_slot is not None:
                # migrate_vma_check_page counts the swap cache's reference; whether
                # migrate_vma_pages moves a swap-cache folio to device memory is not read.
                raise Unmodelled("migrate_to_dev of a page in the swap cache")
            if folio.page_cache:
                if mirror.flags & FAIL_ALLOC:
                    raise Unmodelled("migrate_to_dev of a shmem page with FAIL_ALLOC set",
                                     "whether the collected page consumes the flag")
                # Collected and isolated (migrate_vma_collect_pmd: a page with a mapping),
                # a device page allocated and filled, but migrate_vma_pages: "only support
                # anonymous memory migrating to device private" clears MIGRATE_PFN_MIGRATE;
                # migrate_vma_finalize puts the PTE back as it was (same folio, same
                # permission) and dmirror_migrate_finalize_and_map skips the page.
                continue
        if pte is None and vma.obj is not None:
            # migrate_vma_collect_hole: "Only allow populating anonymous memory."
            continue
        # pte_none and the zero page are collected without a page (MIGRATE_PFN_MIGRATE
        # only, no MIGRATE_PFN_WRITE); a present anonymous folio with MIGRATE_PFN_WRITE
        # iff its PTE is writable.
        write = pte is not None and pte.kind is Kind.PRESENT and pte.writable
        if mirror.flags & FAIL_ALLOC:
            # dmirror_migrate_alloc_and_copy: the flag is cleared and this page gets no
            # device page (order 0: goto next); migrate_vma_finalize restores the PTE.
            mirror.flags &= ~FAIL_ALLOC
            continue
        if pte is None or pte.kind is Kind.ZERO:
            # migrate_vma_insert_page: anon_vma_prepare, then a device-private entry that is
            # writable iff the VMA has VM_WRITE; the device page was cleared.
            vmas.anon_prepare(world, mm, vpn)
            content = world.content(ZERO_FOLIO)
            exclusive = True
            writable = vma.prot.writable
            old = None
        else:
            old = world.folios[pte.folio]
            content, exclusive, writable = old.content, old.exclusive, pte.writable
        device_folio = world.new_id()
        # A lazyfree source: the dirty state through migration is not followed.
        lazyfree = Lazyfree.UNKNOWN if old is not None and old.lazyfree is not None else None
        world.folios[device_folio] = Folio(content, 1, exclusive, mirror.device, mirror_id,
                                           lazyfree=lazyfree)
        # migrate_vma_collect_pmd carries a present page's soft-dirty and uffd-wp bits into
        # the entry (the migration entry's pte_swp_mkuffd_wp, then remove_migration_pte);
        # migrate_vma_insert_page (pte_none, zero page) makes a fresh entry without either,
        # writable iff VM_WRITE even where the zero page was uffd-wp (docs/findings.md #13).
        ptes[vpn] = Pte(Kind.DEVICE, device_folio, writable,
                        soft_dirty=old is not None and pte.soft_dirty,
                        uffd_wp=old is not None and pte.uffd_wp)
        if old is not None:
            # The source folio is freed: dmirrors of this device (which ignored the
            # notifier) other than this one keep a pointer to it.
            _stale_other_entries(world, mm_id, mirror_id, vpn, pte.folio)
            _free_folio(world, pte.folio)
        # dmirror_migrate_finalize_and_map: the backing page, WRITE iff MIGRATE_PFN_WRITE.
        mirror.table[vpn] = Entry(device_folio, Tag.WRITE if write else Tag.READ)


# ------------------------------------------------------------------ MIGRATE_TO_SYS

def migrate_to_sys(world: World, op, places: Places) -> list[Outcome]:
    mirror_id = world.fds[(op.proc, op.fd)]
    mirror = world.mirrors[mirror_id]
    start, end = places.vpns(op.range)
    mm = world.mms[mirror.mm]
    if not mm.alive:
        return [(fail(EINVAL, "dmirror_migrate_to_system: mmget_not_zero() fails, the "
                              "mirrored process has exited -> -EINVAL"), world)]
    migrated = 0
    for addr, nxt, vma in _chunks(mm, start, end):
        if vma is None:
            return [(fail(EINVAL, f"dmirror_migrate_to_system: vma_lookup finds no readable "
                                  f"VMA at {places.name(addr)} -> -EINVAL (earlier pieces "
                                  "stay migrated)"), world)]
        # migrate_vma_collect: MMU_NOTIFY_MIGRATE over the piece, owner = this device.
        invalidate(world, mirror.mm, addr, nxt, migrating_device=mirror.device)
        whole = device_thp.migrate_piece_to_sys(world, mirror_id, mm, addr, nxt)
        if whole is not None:
            migrated += whole
            continue
        for vpn in range(addr, nxt):
            pte = mm.ptes.get(vpn)
            if pte is None or pte.kind is not Kind.DEVICE:
                continue  # only device-private entries are selected (and holes, unused)
            folio = world.folios[pte.folio]
            if folio.device != mirror.device:
                continue  # pgmap->owner != migrate->pgmap_owner
            _shared_device_page(world, vpn, folio, "migrate_to_sys")
            if mirror.flags & FAIL_ALLOC:
                raise Unmodelled("migrate_to_sys with FAIL_ALLOC set",
                                 "dmirror_devmem_fault_alloc_and_copy returns VM_FAULT_OOM "
                                 "after allocating part of the piece")
            # dmirror_devmem_fault_alloc_and_copy erases the page from *this* dmirror.
            mirror.table.pop(vpn, None)
            _stale_other_entries(world, mirror.mm, mirror_id, vpn, pte.folio)
            # dmirror_devmem_fault_alloc_and_copy: alloc_page_vma, by the VMA's policy
            _back_to_system(world, mm, vpn, vmas.alloc_node(vma))
            migrated += 1
    return [(Expect(cpages=(migrated,), faults=(0,), why={
        "errno": "dmirror_migrate_to_system: every piece of the range has a readable VMA",
        "cpages": "dmirror_successful_migrated_pages: the device-private pages of this "
                  "device in the range",
        "faults": "dmirror_migrate_to_system never counts faults",
        "pages": "the runner reports no pages for migrate_to_sys"}), world)]


# ------------------------------------------------------------------ eviction

def evict_device(world: World, device: str) -> None:
    """dmirror_device_evict_chunk for every chunk of the device: migrate_device_range()
    takes every device page in use; migrate_device_unmap() -> try_to_migrate() fires
    MMU_NOTIFY_CLEAR over the page in the mm mapping it (every dmirror of that mm erases the
    page and the next); the page comes back as a new system folio, writable iff the
    device-private entry was."""
    device_thp.evict(world, device)
    for mm_id, mm in world.mms.items():
        for vpn in sorted(v for v, p in mm.ptes.items() if p.kind is Kind.DEVICE):
            pte = mm.ptes[vpn]
            folio = world.folios[pte.folio]
            if folio.device != device:
                continue
            _shared_device_page(world, vpn, folio, "evicting device pages")
            invalidate(world, mm_id, vpn, vpn + 1)
            _stale_other_entries(world, mm_id, None, vpn, pte.folio)
            # dmirror_device_evict_chunk: alloc_page without a VMA, the caller's (default)
            # policy: the local node
            _back_to_system(world, mm, vpn, vmas.LOCAL_NODE)


def release(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_RELEASE: dmirror_device_remove_chunks evicts every chunk of the device,
    whichever process mapped the pages, and frees the chunks."""
    mirror = world.mirrors[world.fds[(op.proc, op.fd)]]
    evict_device(world, mirror.device)
    return [(Expect(cpages=(0,), faults=(0,), why={
        "errno": "HMM_DMIRROR_RELEASE always returns 0",
        "cpages": "the ioctl sets cpages to 0 and RELEASE leaves it",
        "faults": "the ioctl sets faults to 0 and RELEASE leaves it"}), world)]


def flags(world: World, op, places: Places) -> list[Outcome]:
    """HMM_DMIRROR_FLAGS: dmirror->flags = cmd.npages. The runner passes the flags in
    npages, so flags 0 fails the ioctl's range check (addr >= addr + 0) with -EINVAL;
    kernels without the command answer -EINVAL from the switch's default."""
    if not world.profile.dmirror_flags:
        return [(fail(EINVAL, "this kernel's dmirror_fops_unlocked_ioctl has no "
                              "HMM_DMIRROR_FLAGS -> -EINVAL (profile.dmirror_flags)"), world)]
    if op.flags == 0:
        return [(fail(EINVAL, "dmirror_fops_unlocked_ioctl: npages 0 makes "
                              "cmd.addr >= cmd.addr + 0 -> -EINVAL"), world)]
    world.mirrors[world.fds[(op.proc, op.fd)]].flags = op.flags
    return [(Expect(cpages=(0,), faults=(0,), why={
        "errno": "HMM_DMIRROR_FLAGS stores the flags and returns 0",
        "cpages": "the ioctl sets cpages to 0", "faults": "the ioctl sets faults to 0"}),
        world)]


# ------------------------------------------------------------------ close, exit

def _drop_fd(world: World, proc: str, fd: str) -> None:
    """The process's file reference goes; on the last one dmirror_fops_release runs:
    mmu_interval_notifier_remove (the mirror is gone), then every chunk of the device is
    evicted (dmirror_device_evict_chunk), whichever process mapped its pages."""
    mirror_id = world.fds.pop((proc, fd))
    if mirror_id in world.fds.values():
        return  # another process (a fork) still holds the file
    device = world.mirrors.pop(mirror_id).device
    for folio_id, folio in list(world.folios.items()):
        if folio.owner == mirror_id:
            # dmirror_devmem_fault would look up this freed dmirror; evict_device below
            # brings every page of the device back first, so no such page remains.
            world.folios[folio_id] = replace(folio, owner=None)
    evict_device(world, device)


def close(world: World, op, places: Places) -> list[Outcome]:
    _drop_fd(world, op.proc, op.fd)
    return [(done("close of an open fd succeeds"), world)]


def exit_process(world: World, op, places: Places) -> list[Outcome]:
    """do_exit: exit_mm drops the mm (mmput; each process has its own mm here, so this is the
    last user): exit_mmap -> mmu_notifier_release fires MMU_NOTIFY_RELEASE over [0, ULONG_MAX]
    on every dmirror of the mm (mn_itree_release), which erases its whole table, then every
    mapping is unmapped and its folios (device folios included) released. Then exit_files
    closes the fds (_drop_fd). A dmirror bound to the dead mm stays open in other processes,
    but mmget_not_zero() fails from now on."""
    mm_id = world.procs.pop(op.proc)
    mm = world.mms[mm_id]
    for mirror in world.mirrors_of(mm_id):
        mirror.table.clear()
    if mm.vmas:
        zap(world, mm_id, mm, min(v.start for v in mm.vmas), max(v.end for v in mm.vmas))
    mm.vmas.clear()
    mm.alive = False
    for proc, fd in [key for key in world.fds if key[0] == op.proc]:
        _drop_fd(world, proc, fd)
    return [(done("the process exits"), world)]
