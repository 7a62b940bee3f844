"""Device-private memory: HMM_DMIRROR_MIGRATE_TO_DEV / _TO_SYS, the CPU fault that brings a
device page back (dmirror_devmem_fault), eviction (HMM_DMIRROR_RELEASE and the last close of
a dmirror fd), HMM_DMIRROR_FLAGS; and the lifetime ops `close` and `exit`.

Sources: lib/test_hmm.c and mm/migrate_device.c (7.2). A device page is a folio with
`device` set; its content stands for the backing system page the test driver copies into
(BACKING_PAGE, dpage->zone_device_data). Cases the model does not know raise Unmodelled.
"""

from __future__ import annotations

from dataclasses import replace

from .expect import ANY_BYTES, EINVAL, ENOENT, ENOMEM, Expect, done, fail, read_page
from .mm import invalidate, zap
from .places import Places
from .refuse import Unmodelled
from .uapi import FAIL_ALLOC
from .state import STALE, ZERO_FOLIO, Entry, Folio, Kind, Lazyfree, Mm, Pte, Tag, World
from . import coherent, device_thp, rmap, vma as vmas
from .hmm import STALE_READ_WHY, settle
from .numa import migration_marks_soft_dirty

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
    try_to_migrate() unmapped (after fork), remapped to the same new folio. A coherent
    page's present PTE gives the migration entry its dirty bit (migrate_vma_collect_pmd,
    try_to_migrate_one: make_migration_entry_dirty), so the new PTE is as clean as it was;
    a device-exclusive entry of a coherent page (eviction only) gives a readable migration
    entry (try_to_migrate_one: softleaf_is_device_private_write is false for it), exclusive
    if the page is PageAnonExclusive, not dirty: the page comes back read-only and clean."""
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
        clean = entry.clean if entry.kind is Kind.PRESENT else True
        soft_dirty = entry.soft_dirty or (world.profile.migration_dirty_sets_soft_dirty
                                          and migration_marks_soft_dirty(entry))
        writable = entry.writable and entry.kind is not Kind.EXCLUSIVE
        where.ptes[page] = Pte(Kind.PRESENT, new, writable, clean=clean,
                               soft_dirty=soft_dirty, uffd_wp=entry.uffd_wp)
    del world.folios[pte.folio]


def _unmap_shared(world: World, mm_id: int, vpn: int, folio_id: int,
                  what: str) -> list[tuple[int, int]]:
    """The collect step (migrate_vma_collect_pmd) unmapped the folio at vpn of mm_id itself
    (a migration entry, folio_remove_rmap_pte); if other processes still map it (after
    fork), migrate_device_unmap calls try_to_migrate() on them (rmap.py: a CLEAR in each,
    maybe one in the collecting process's own VMA). Returns the other mappings, which
    remove_migration_ptes later points at the same destination folio."""
    folio = world.folios[folio_id]
    if folio.mapcount == 1:
        return []
    others = [(other_id, other_vpn) for other_id, other_vpn in rmap.mappings(world, folio_id)
              if (other_id, other_vpn) != (mm_id, vpn)]
    if len(others) != folio.mapcount - 1:
        raise Unmodelled(what, "a page mapped where the model does not find it")
    rmap.unmap_walk(world, mm_id, vpn, others)
    return others


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
    owner = world.mirrors.get(folio.owner)
    if owner is not None and owner.flags & FAIL_ALLOC:
        raise Unmodelled("a CPU fault on a device-private page with FAIL_ALLOC set",
                         "dmirror_devmem_fault returns VM_FAULT_OOM")
    invalidate(world, mm_id, vpn, vpn + 1, migrating_device=folio.device)
    # A page still shared after fork comes back in every process mapping it, to one new
    # system folio, each keeping its entry's bits (_unmap_shared, _back_to_system).
    others = _unmap_shared(world, mm_id, vpn, pte.folio, "a CPU fault on a device-private "
                                                         "page mapped by several processes")
    if owner is not None:
        owner.table.pop(vpn, None)
    _stale_other_entries(world, mm_id, folio.owner, vpn, pte.folio)
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
    # dmirror_do_read of the whole range from the mirror table; an entry the rmap walk of a
    # shared page may have erased (rmap.maybe_invalidate) decides -ENOENT or not.
    return [(_read_back(w, w.mirrors[mirror_id], start, end, places), w)
            for w in settle(world, mirror_id, start, end, _missing)]


def _missing(entry: Entry | None) -> bool:
    return entry is None


def _read_back(world: World, mirror, start: int, end: int, places: Places) -> Expect:
    pages, why = [], []
    for vpn in range(start, end):
        entry = mirror.table.get(vpn)
        if entry is None:
            return fail(ENOENT, f"dmirror_migrate_to_device: {places.name(vpn)} was not "
                                "migrated and is not in the mirror, so dmirror_do_read "
                                "returns -ENOENT")
        if entry.folio == STALE:
            pages.append(ANY_BYTES)
            why.append(STALE_READ_WHY)
            continue
        content = world.content(entry.folio)
        pages.append(read_page(content))
        why.append(f"the mirror entry holds {content}")
    n = end - start
    return Expect(cpages=(n,), faults=(0,), pages=tuple(pages), page_why=tuple(why), why={
        "errno": "every page of the range is migrated or already in the mirror, so "
                 "dmirror_do_read succeeds",
        "cpages": "dmirror_migrate_to_device reports bounce.cpages: every page read back",
        "faults": "dmirror_migrate_to_device never counts faults",
        "pages": "dmirror_do_read copies each page from the mirror"})


def _migrate_piece_to_dev(world: World, mirror_id: int, mm: Mm, vma, start: int, end: int,
                          places: Places) -> None:
    """migrate_vma_setup (MIGRATE_VMA_SELECT_SYSTEM) + dmirror_migrate_alloc_and_copy +
    migrate_vma_pages + dmirror_migrate_finalize_and_map + migrate_vma_finalize."""
    mirror = world.mirrors[mirror_id]
    mm_id = mirror.mm
    ptes = mm.ptes
    to_coherent = coherent.is_coherent_device(mirror.device)
    if to_coherent:
        coherent.refuse_compound(world, mm, vma, start, end)
    if device_thp.migrate_piece_to_dev(world, mirror_id, mm, vma, start, end):
        # the whole aligned 2 MiB as one entry (MIGRATE_VMA_SELECT_COMPOUND), device_thp.py;
        # otherwise the THPs the piece meets in part are split and it goes page by page
        return
    # migrate_vma_collect: one MMU_NOTIFY_MIGRATE over the piece, owner = this device.
    invalidate(world, mm_id, start, end, migrating_device=mirror.device)
    # migrate_device_unmap: try_to_migrate() of the pages shared after fork, before any
    # device page is allocated or mirrored.
    shared = {vpn: _unmap_shared(world, mm_id, vpn, ptes[vpn].folio,
                                 "migrate_to_dev of a page mapped by several processes")
              for vpn in range(start, end) if _collects_shared(world, ptes.get(vpn))}
    for vpn in range(start, end):
        pte = ptes.get(vpn)
        if pte is not None and pte.kind in (Kind.DEVICE, Kind.EXCLUSIVE, Kind.SWAP):
            # migrate_vma_collect_pmd: a non-present entry that is not device-private of a
            # selected owner (SELECT_SYSTEM selects none) is skipped ("we ignore regular
            # swapped page").
            continue
        if pte is not None and pte.kind is Kind.PRESENT:
            if coherent.is_coherent_page(world, pte.folio):
                # migrate_vma_collect_pmd selects a device-coherent page only under
                # MIGRATE_VMA_SELECT_DEVICE_COHERENT with its own pgmap owner;
                # dmirror_migrate_to_device asks for SELECT_SYSTEM: skipped.
                continue
            folio = world.folios[pte.folio]
            if folio.ksm:
                raise Unmodelled("migrate_to_dev of a KSM page",
                                 "the KSM folio moves, stable node and all, to device "
                                 "memory, and a later KSM scan oopses (docs/findings.md #12)")
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
                # permission) and dmirror_migrate_finalize_and_map skips the page. Mapped
                # several times, it was unmapped everywhere first (try_to_migrate walks
                # the object's mappings: _unmap_shared), and remove_migration_ptes(src,
                # src) maps it back in each, with each entry's bits.
                continue
        if pte is None and vma.obj is not None:
            # migrate_vma_collect_hole: "Only allow populating anonymous memory."
            continue
        # pte_none and the zero page are collected without a page (MIGRATE_PFN_MIGRATE
        # only, no MIGRATE_PFN_WRITE; 6.x's driver adds it for a VM_WRITE VMA:
        # profile.hole_mirrored_writable); a present anonymous folio with
        # MIGRATE_PFN_WRITE iff its PTE is writable.
        write = pte is not None and pte.kind is Kind.PRESENT and pte.writable
        if pte is None or pte.kind is Kind.ZERO:
            write = world.profile.hole_mirrored_writable and vma.prot.writable
        if mirror.flags & FAIL_ALLOC:
            # dmirror_migrate_alloc_and_copy: the flag is cleared and this page gets no
            # device page (order 0: goto next); migrate_vma_finalize restores the PTE (of a
            # page shared after fork: every mapping, remove_migration_ptes(src, src), the
            # same folio with each entry's bits).
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
        others = shared.get(vpn, [])
        # A lazyfree source: the dirty state through migration is not followed. (A
        # coherent page is never on the LRU, so nothing reclaims it as lazyfree.)
        lazyfree = (Lazyfree.UNKNOWN if old is not None and old.lazyfree is not None
                    and not to_coherent else None)
        world.folios[device_folio] = Folio(content, 1 + len(others), exclusive,
                                           mirror.device, mirror_id, lazyfree=lazyfree)
        # migrate_vma_collect_pmd carries a present page's soft-dirty and uffd-wp bits into
        # the entry (the migration entry's pte_swp_mkuffd_wp, then remove_migration_pte);
        # migrate_vma_insert_page (pte_none, zero page) makes a fresh entry without either,
        # writable iff VM_WRITE even where the zero page was uffd-wp (docs/findings.md #13).
        if to_coherent:
            ptes[vpn] = _coherent_pte(world, device_folio, writable, vma,
                                      pte if old is not None else None)
        else:
            ptes[vpn] = Pte(Kind.DEVICE, device_folio, writable,
                            soft_dirty=old is not None and pte.soft_dirty,
                            uffd_wp=old is not None and pte.uffd_wp)
        for other_id, other_vpn in others:
            # remove_migration_ptes: every other mapping try_to_migrate_one replaced gets a
            # device-private entry for the same device page, with its own bits (a folio
            # shared after fork is not PageAnonExclusive, so every entry is read-only, and
            # the device folio is not exclusive either: RMAP_EXCLUSIVE needs an exclusive
            # migration entry).
            other = world.mms[other_id].ptes[other_vpn]
            world.mms[other_id].ptes[other_vpn] = (
                _coherent_pte(world, device_folio, other.writable, vma, other) if to_coherent
                else replace(other, kind=Kind.DEVICE, folio=device_folio, clean=False))
        if old is not None:
            # The source folio is freed: dmirrors of this device (which ignored the
            # notifier) other than this one keep a pointer to it.
            _stale_other_entries(world, mm_id, mirror_id, vpn, pte.folio)
            _free_folio(world, pte.folio)
        # dmirror_migrate_finalize_and_map: the backing page, WRITE iff MIGRATE_PFN_WRITE.
        mirror.table[vpn] = Entry(device_folio, Tag.WRITE if write else Tag.READ)


def _coherent_pte(world: World, folio: int, writable: bool, vma, source: Pte | None) -> Pte:
    """The present PTE of a page migrated to device-coherent memory. From pte_none or the
    zero page, migrate_vma_insert_page: mk_pte(vm_page_prot), pte_mkwrite(pte_mkdirty())
    when VM_WRITE (pte_mkdirty sets the soft-dirty bit too on x86). From a present page,
    remove_migration_pte: the source PTE's write, soft-dirty, uffd-wp and dirty state
    through the migration entry (6.1 sets soft-dirty for a dirty one: numa.py)."""
    if source is None:
        return Pte(Kind.PRESENT, folio, writable, clean=not vma.prot.writable,
                   soft_dirty=vma.prot.writable)
    soft_dirty = source.soft_dirty or (world.profile.migration_dirty_sets_soft_dirty
                                       and migration_marks_soft_dirty(source))
    return Pte(Kind.PRESENT, folio, source.writable, clean=source.clean,
               soft_dirty=soft_dirty, uffd_wp=source.uffd_wp)


def _collects_shared(world: World, pte: Pte | None) -> bool:
    """A present folio mapped several times (after fork; a page-cache folio also by several
    mappings of its object), which migrate_vma_collect_pmd collects (KSM and swap-cache
    folios are refused by the caller; device-coherent pages are not selected)."""
    if pte is None or pte.kind is not Kind.PRESENT or coherent.is_coherent_page(world, pte.folio):
        return False
    folio = world.folios[pte.folio]
    return folio.mapcount > 1 and not folio.ksm and folio.swap_slot is None


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
            if not _selected_for_sys(world, mirror, pte):
                continue
            # migrate_device_unmap: try_to_migrate() of a page shared after fork; it comes
            # back in every process mapping it, to one new folio (_back_to_system).
            others = _unmap_shared(world, mirror.mm, vpn, pte.folio,
                                   "migrate_to_sys of a page mapped by several processes")
            if mirror.flags & FAIL_ALLOC:
                raise Unmodelled("migrate_to_sys with FAIL_ALLOC set",
                                 "dmirror_devmem_fault_alloc_and_copy returns VM_FAULT_OOM "
                                 "after allocating part of the piece")
            # dmirror_devmem_fault_alloc_and_copy erases the page from *this* dmirror.
            mirror.table.pop(vpn, None)
            _stale_other_entries(world, mirror.mm, mirror_id, vpn, pte.folio)
            # dmirror_devmem_fault_alloc_and_copy: alloc_page_vma, by the VMA's policy
            _back_to_system(world, mm, vpn, vmas.alloc_node(vma),
                            [(world.mms[other_id], other_vpn) for other_id, other_vpn in others])
            migrated += 1
    return [(Expect(cpages=(migrated,), faults=(0,), why={
        "errno": "dmirror_migrate_to_system: every piece of the range has a readable VMA",
        "cpages": "dmirror_successful_migrated_pages: the device-private pages of this "
                  "device in the range",
        "faults": "dmirror_migrate_to_system never counts faults",
        "pages": "the runner reports no pages for migrate_to_sys"}), world)]


def _selected_for_sys(world: World, mirror, pte: Pte | None) -> bool:
    """migrate_vma_collect_pmd under dmirror_select_device(): a device-private dmirror
    selects device-private entries (MIGRATE_VMA_SELECT_DEVICE_PRIVATE), a coherent one
    present device-coherent pages (MIGRATE_VMA_SELECT_DEVICE_COHERENT), in both cases only
    pages whose pgmap owner is this device (holes are collected, but unused)."""
    kind = Kind.PRESENT if coherent.is_coherent_device(mirror.device) else Kind.DEVICE
    return (pte is not None and pte.kind is kind
            and world.folios[pte.folio].device == mirror.device)


# ------------------------------------------------------------------ eviction

def evict_device(world: World, device: str) -> None:
    """dmirror_device_evict_chunk for every chunk of the device: migrate_device_range()
    takes every device page in use; migrate_device_unmap() -> try_to_migrate() unmaps each
    from every process mapping it (rmap.py: a MMU_NOTIFY_CLEAR over the page in each, which
    erases it from every dmirror of that mm, maybe one in other VMAs over the same page
    offset); the page comes back as one new system folio, mapped by the same processes,
    each entry writable iff it was (try_to_migrate_one: a writable migration entry for a
    writable device-private one; remove_migration_pte)."""
    device_thp.evict(world, device)
    pages = sorted({pte.folio: (mm_id, vpn)
                    for mm_id, mm in world.mms.items() if mm.alive
                    for vpn, pte in mm.ptes.items()
                    if pte.kind in (Kind.DEVICE, Kind.PRESENT, Kind.EXCLUSIVE)
                    and world.folios[pte.folio].device == device}.items())
    for folio_id, (mm_id, vpn) in pages:
        if world.profile.exclusive_entry_unmapped and any(
                world.mms[m].ptes[v].kind is Kind.EXCLUSIVE
                for m, v in rmap.mappings(world, folio_id)):
            raise Unmodelled("evicting a device-coherent page behind a device-exclusive entry "
                             "on 6.x", "6.x make_device_exclusive dropped the rmap, so "
                             "migrate_vma_check_page refuses the page: it stays, and RELEASE "
                             "hangs in memunmap_pages (docs/findings.md #21)")
        mapped = rmap.mappings(world, folio_id)
        if len(mapped) != world.folios[folio_id].mapcount:
            raise Unmodelled("evicting a device page mapped where the model does not find it")
        rmap.unmap_walk(world, mm_id, vpn, mapped)
        # dmirror_device_evict_chunk: alloc_page without a VMA, the caller's (default)
        # policy: the local node
        _back_to_system(world, world.mms[mm_id], vpn, vmas.LOCAL_NODE,
                        [(world.mms[other_id], other_vpn) for other_id, other_vpn in mapped
                         if (other_id, other_vpn) != (mm_id, vpn)])


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
