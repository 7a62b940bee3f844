"""Device THPs (7.2): 2 MiB folios of device-private memory mapped by one PMD entry.

lib/test_hmm.c migrates with MIGRATE_VMA_SELECT_COMPOUND (dmirror_migrate_to_device,
dmirror_migrate_to_system) and mm/migrate_device.c then moves a whole aligned PMD at once:

- to the device: migrate_vma_collect_huge_pmd / migrate_vma_collect_hole collect a
  PMD-mapped THP, the huge zero PMD or an empty PMD (pmd_none: no PTE table) as one entry
  when the piece is the whole aligned 2 MiB; dmirror_migrate_alloc_and_copy allocates a
  device THP (dmirror_devmem_alloc_page(dmirror, is_large)) and the device-private PMD entry
  is installed (remove_migration_pmd for a THP, migrate_vma_insert_huge_pmd_page for the
  others). With FAIL_ALLOC set the driver takes 512 small device pages instead and the PMD
  is split (migrate_vma_split_unmapped_folio for a THP, migrate_vma_insert_page for the
  rest);
- back: do_huge_pmd_device_private -> dmirror_devmem_fault (vmf->pte NULL: the folio's
  order), dmirror_migrate_to_system of the whole 2 MiB, eviction at RELEASE and close
  (dmirror_device_evict_chunk); dmirror_devmem_fault_alloc_and_copy allocates a THP
  (vma_alloc_folio) or, with FAIL_ALLOC set, 512 small pages; a device THP shared by fork
  comes back in every process mapping it (try_to_migrate of the others' PMDs,
  remove_migration_pmd in each: `_back`, `evict`);
- the PMD-order allocations (folio_alloc(GFP_HIGHUSER) of the backing page,
  vma_alloc_folio(GFP_HIGHUSER_MOVABLE) on the way back, folio_alloc at eviction) may
  reclaim and compact; their failure is assumed away, as other allocation failures are;
- a piece that covers part of a THP splits its folio (migrate_vma_split_folio, the
  fallback of migrate_vma_collect_huge_pmd: split_folio), and a CPU fault on a
  PTE-mapped page of a device THP splits the device folio first.

The model keeps a device THP as a device Pmd (thp.Pmd with `device`) over 512 device-private
entries whose device folios name the head (Folio.thp), as for THPs in system memory. Ops not
stated for device THPs yet are refused where they meet one (`guard`).
"""

from __future__ import annotations

from harness.prog import ZERO
from harness.prog.ops import (
    Advice, CheckExclusive, CloseDevice, CpuRead, CpuWrite, DevRead, DevWrite, Exit,
    Flags, Fork, Madvise, Map, MigrateToDev, MigrateToSys, Mprotect, Mremap, Munmap,
    OpenDevice, Pagemap, Release, Smaps, Snapshot, Thp,
)

from .mm import invalidate
from .refuse import Unmodelled, op_meets, op_name
from .state import Entry, Folio, Kind, Mm, Pte, Tag, World
from .thp import PMD_PAGES, Pmd, pmd_of, pmd_range, split_pmd_mapping
from .uapi import FAIL_ALLOC, PROT_ERROR
from . import rmap, thp_split, vma as vmas


# ------------------------------------------------------------------ what is where

def device_pmd(mm: Mm, index: int) -> Pmd | None:
    pmd = mm.pmds.get(index)
    return pmd if pmd is not None and pmd.device else None


def _large_device_page(world: World, pte: Pte | None) -> bool:
    return (pte is not None and pte.kind is Kind.DEVICE
            and world.folios[pte.folio].thp is not None)


def _mappings(world: World, head: int, what: str) -> list[tuple[int, int, int]]:
    """(mm id, vpn, device folio id) of every entry mapping a page of the device THP
    `head`: by its device-private PMD (one process, or several after fork:
    copy_huge_non_present_pmd, folio_try_dup_anon_rmap_pmd) or by PTEs where a process
    split its PMD. Refused when a page's mapcount says it is mapped where the model does
    not find it."""
    found = thp_split.pages_of(world, head)
    counts: dict[int, int] = {}
    for _, _, folio_id in found:
        counts[folio_id] = counts.get(folio_id, 0) + 1
    if any(world.folios[folio_id].mapcount != n for folio_id, n in counts.items()):
        raise Unmodelled(what, "a device THP page mapped where the model does not find it")
    return found


def _base(world: World, vpn: int, pte: Pte) -> int:
    return vpn - world.folios[pte.folio].thp_index


# ------------------------------------------------------------------ splitting a folio

def split_folio(world: World, mm_id: int, vpn: int) -> None:
    """split_folio() of the large folio (a THP or a device THP) whose page `vpn` maps
    (thp_split.split_folio: the notifiers of try_to_migrate, order-0 folios with the same
    bits and PFNs, zero-filled pages of a THP in system memory as the shared zero page)."""
    mm = world.mms[mm_id]
    head = world.folios[mm.ptes[vpn].folio].thp
    for _, _, folio_id in thp_split.pages_of(world, head):
        if world.folios[folio_id].mapcount != 1:
            raise Unmodelled("splitting a THP mapped by several processes",
                             "try_to_migrate of those mappings is not followed")
    thp_split.split_folio(world, mm_id, mm, head)


# ------------------------------------------------------------------ MIGRATE_TO_DEV

def migrate_piece_to_dev(world: World, mirror_id: int, mm: Mm, vma, start: int,
                         end: int) -> bool:
    """What migrate_vma_collect does with the PMDs of one piece of dmirror_migrate_to_device
    (MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND). True when the piece is done
    (the whole aligned 2 MiB, collected as one entry); False when the caller goes on page
    by page, after the splits a partial piece causes."""
    if vma.obj is not None or not world.profile.device_thp:
        return False
    mirror = world.mirrors[mirror_id]
    index = pmd_of(start)
    if start % PMD_PAGES == 0 and end - start == PMD_PAGES:
        pmd = mm.pmds.get(index)
        if pmd is not None and pmd.device:
            # migrate_vma_collect_huge_pmd: a device-private PMD, and SELECT_SYSTEM does
            # not select device-private entries: migrate_vma_collect_skip.
            invalidate(world, mirror.mm, start, end, migrating_device=mirror.device)
            return True
        if pmd is None and index in mm.tables:
            if mm.tables[index] is None:
                raise Unmodelled("migrate_to_dev of a 2 MiB-aligned piece that may or may "
                                 "not have a PTE table", "mremap may have moved the table")
            # a PTE table: walk_pmd_range goes to the PTEs (THP pages there split)
            _split_for_piece(world, mirror, mm, start, end)
            return False
        if pmd is not None and not pmd.zero:
            _thp_to_device(world, mirror_id, mm, index)
        else:
            _hole_to_device(world, mirror_id, mm, vma, index, zero=pmd is not None)
        return True
    _split_for_piece(world, mirror, mm, start, end)
    return False


def _device_allocation(world: World, mirror, mm: Mm, index: int) -> bool:
    """Does dmirror_migrate_alloc_and_copy get a device THP? FAIL_ALLOC makes the first
    allocation fail (and clears itself): the driver then takes HPAGE_PMD_NR small device
    pages (dmirror_devmem_alloc_page(dmirror, false)) and copies page by page, no
    MIGRATE_PFN_COMPOUND in dst. Otherwise the backing folio_alloc(GFP_HIGHUSER,
    HPAGE_PMD_ORDER) succeeds: it may reclaim and compact (__GFP_DIRECT_RECLAIM), and
    allocation failures under memory pressure are assumed away (docs/model.md)."""
    if mirror.flags & FAIL_ALLOC:
        mirror.flags &= ~FAIL_ALLOC
        mm.tables[index] = True
        return False
    return True


def _hole_to_device(world: World, mirror_id: int, mm: Mm, vma, index: int,
                    zero: bool) -> None:
    """migrate_vma_collect_hole with SELECT_COMPOUND over an empty aligned 2 MiB (pmd_none)
    or the huge zero PMD (migrate_vma_collect_huge_pmd: is_huge_zero_folio -> hole): one
    MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND entry without a page or MIGRATE_PFN_WRITE.
    migrate_vma_insert_huge_pmd_page: anon_vma_prepare, a device-private PMD entry,
    writable iff VM_WRITE, without soft-dirty or uffd-wp bits, RMAP_EXCLUSIVE; over the
    huge zero PMD it replaces it (pmdp_invalidate, no notifier). Small pages instead:
    __migrate_device_pages inserts each (migrate_vma_insert_page), whose first insert into
    the huge zero PMD splits it (split_huge_pmd: MMU_NOTIFY_CLEAR over the 2 MiB).
    dmirror_migrate_finalize_and_map stores every page READ (no MIGRATE_PFN_WRITE)."""
    mirror = world.mirrors[mirror_id]
    base = index * PMD_PAGES
    invalidate(world, mirror.mm, base, base + PMD_PAGES, migrating_device=mirror.device)
    large = _device_allocation(world, mirror, mm, index)
    if zero and not large:
        invalidate(world, mirror.mm, base, base + PMD_PAGES)
    vmas.anon_prepare(world, mm, base)
    head = None
    for i, vpn in enumerate(pmd_range(index)):
        folio = world.new_id()
        head = folio if head is None else head
        world.folios[folio] = Folio(ZERO, 1, True, mirror.device, mirror_id,
                                    thp=head if large else None, thp_index=i if large else 0)
        mm.ptes[vpn] = Pte(Kind.DEVICE, folio, vma.prot.writable, soft_dirty=False)
        mirror.table[vpn] = Entry(folio, Tag.READ)
    _set_pmd(mm, index, head if large else None)


def _thp_to_device(world: World, mirror_id: int, mm: Mm, index: int) -> None:
    """migrate_vma_collect_huge_pmd over a PMD-mapped THP and the whole aligned 2 MiB:
    set_pmd_migration_entry (write, PageAnonExclusive, soft-dirty, uffd-wp carried), one
    MIGRATE_PFN_COMPOUND entry, MIGRATE_PFN_WRITE iff pmd_write. A device THP:
    remove_migration_pmd installs the device-private PMD with the entry's bits. Small
    device pages: migrate_vma_split_unmapped_folio splits the PMD migration entry
    (split_huge_pmd_address: MMU_NOTIFY_CLEAR over the 2 MiB) and the folio, and each page
    migrates as an order-0 page with the same bits. The mirror stores each page WRITE iff
    MIGRATE_PFN_WRITE. The source pages are freed; dmirrors of this device that ignored the
    collect notifier keep pointers to them (device._stale_other_entries)."""
    from .device import _stale_other_entries
    mirror = world.mirrors[mirror_id]
    base = index * PMD_PAGES
    for vpn in pmd_range(index):
        if world.folios[mm.ptes[vpn].folio].mapcount != 1:
            raise Unmodelled("migrate_to_dev of a THP mapped by several processes")
    invalidate(world, mirror.mm, base, base + PMD_PAGES, migrating_device=mirror.device)
    large = _device_allocation(world, mirror, mm, index)
    if not large:
        invalidate(world, mirror.mm, base, base + PMD_PAGES)
    head = None
    for i, vpn in enumerate(pmd_range(index)):
        pte = mm.ptes[vpn]
        old = world.folios[pte.folio]
        folio = world.new_id()
        head = folio if head is None else head
        world.folios[folio] = Folio(old.content, 1, old.exclusive, mirror.device, mirror_id,
                                    thp=head if large else None, thp_index=i if large else 0)
        mm.ptes[vpn] = Pte(Kind.DEVICE, folio, pte.writable, soft_dirty=pte.soft_dirty,
                           uffd_wp=pte.uffd_wp)
        _stale_other_entries(world, mirror.mm, mirror_id, vpn, pte.folio)
        del world.folios[pte.folio]
        mirror.table[vpn] = Entry(folio, Tag.WRITE if pte.writable else Tag.READ)
    _set_pmd(mm, index, head if large else None)


def _set_pmd(mm: Mm, index: int, device_head: int | None) -> None:
    if device_head is not None:
        mm.pmds[index] = Pmd(device_head, device=True)
        mm.tables.pop(index, None)
    else:
        mm.pmds.pop(index, None)
        mm.tables[index] = True


def _split_for_piece(world: World, mirror, mm: Mm, start: int, end: int) -> None:
    """A piece that is not a whole aligned 2 MiB: migrate_vma_collect_huge_pmd's fallback
    splits a PMD-mapped THP (split_folio), a THP page met through a PTE splits its folio
    (migrate_vma_split_folio), the huge zero PMD is collected as holes page by page and
    split by the first migrate_vma_insert_page into it (split_huge_pmd: MMU_NOTIFY_CLEAR
    over the 2 MiB); a device-private PMD or PTE is skipped (SELECT_SYSTEM only)."""
    for index in range(pmd_of(start), pmd_of(end - 1) + 1):
        pmd = mm.pmds.get(index)
        if pmd is None or pmd.device:
            continue
        if pmd.zero:
            if mirror.flags & FAIL_ALLOC:
                raise Unmodelled("migrate_to_dev of part of the huge zero PMD with FAIL_ALLOC "
                                 "set", "whether any page of it is inserted is not followed")
            invalidate(world, mirror.mm, index * PMD_PAGES, (index + 1) * PMD_PAGES)
            split_pmd_mapping(mm, index)
        else:
            split_folio(world, mirror.mm, index * PMD_PAGES)
    for vpn in range(start, end):
        pte = mm.ptes.get(vpn)
        if pte is not None and pte.kind is Kind.PRESENT and \
                world.folios[pte.folio].thp is not None:
            split_folio(world, mirror.mm, vpn)


# ------------------------------------------------------------------ the way back

def devmem_fault(world: World, mm_id: int, mm: Mm, vpn: int) -> bool:
    """A CPU fault (or hmm_range_fault's, or GUP's) on a page of a device THP; False if the
    page is an order-0 device page (device.devmem_fault goes on).

    Through the device-private PMD: do_huge_pmd_device_private -> dmirror_devmem_fault with
    vmf->pte NULL takes the folio's order: the whole 2 MiB comes back (`_back`), for the
    dmirror that migrated it (rpage->zone_device_data), whose FAIL_ALLOC makes it come back
    as small pages (no VM_FAULT_OOM for a large folio). Through a PTE (the PMD was split):
    order 0, and migrate_vma_collect_pmd meets a large device folio: migrate_vma_split_folio
    splits it first (split_folio), then this page alone comes back."""
    pte = mm.ptes[vpn]
    if not _large_device_page(world, pte):
        return False
    index = pmd_of(vpn)
    if device_pmd(mm, index) is None:
        split_folio(world, mm_id, vpn)
        return False
    folio = world.folios[pte.folio]
    owner = world.mirrors.get(folio.owner)
    _back(world, mm_id, mm, index, owner, folio.owner)
    return True


def migrate_piece_to_sys(world: World, mirror_id: int, mm: Mm, start: int,
                         end: int) -> int | None:
    """dmirror_migrate_to_system over one piece (after its collect notifier): the number of
    pages dmirror_successful_migrated_pages counts when the piece is a whole device THP of
    this device, else None (after splitting the device THPs of this device the piece
    meets in part) and the caller goes on page by page.

    A compound migration leaves only src[0] valid (migrate_vma_collect_skip zeroes the
    others), so it counts 1; a split one (migrate_vma_split_unmapped_folio fills src[1..511])
    counts 512."""
    mirror = world.mirrors[mirror_id]
    index = pmd_of(start)
    pmd = device_pmd(mm, index)
    if pmd is not None and start % PMD_PAGES == 0 and end - start == PMD_PAGES:
        if world.folios[pmd.head].device != mirror.device:
            return 0         # pgmap->owner != migrate->pgmap_owner: skipped
        large = _back(world, mirror.mm, mm, index, mirror, mirror_id)
        return 1 if large else PMD_PAGES
    for vpn in range(start, end):
        pte = mm.ptes.get(vpn)
        if _large_device_page(world, pte) and world.folios[pte.folio].device == mirror.device:
            # migrate_vma_collect_huge_pmd's fallback (a device-private PMD, not the whole
            # 2 MiB) and migrate_vma_collect_pmd (a PTE of a large device folio): split_folio
            split_folio(world, mirror.mm, vpn)
    return None


def _back(world: World, mm_id: int, mm: Mm, index: int, mirror, mirror_id) -> bool:
    """A device THP mapped by its PMD comes back to system memory through
    dmirror_devmem_fault_alloc_and_copy for `mirror`: MMU_NOTIFY_MIGRATE over the 2 MiB
    (owner the device: the other devices' dmirrors lose it), xa_erase of every page from
    `mirror`'s table, then vma_alloc_folio(order 9) by the VMA's policy; remove_migration_pmd
    maps the THP by its PMD with the entry's write, soft-dirty and uffd-wp bits, exclusive
    unless the entry was a plain readable one, clean. FAIL_ALLOC (cleared): 512 small
    pages, after migrate_vma_split_unmapped_folio split the PMD
    (MMU_NOTIFY_CLEAR over the 2 MiB). True for a THP.

    Shared by fork: the collect step replaced this process's PMD by a migration entry
    (migrate_vma_collect_huge_pmd: set_pmd_migration_entry), and migrate_device_unmap
    calls try_to_migrate on the folio, still mapped by the others: MMU_NOTIFY_CLEAR over
    each of their VMAs' part of the 2 MiB, maybe over this one's (rmap.unmap_walk_large),
    and a migration entry for each of their PMDs (set_pmd_migration_entry) or PTEs (a
    process that split its PMD); migrate_vma_finalize -> remove_migration_ptes then maps
    the one new THP where each entry was (remove_migration_pmd, remove_migration_pte:
    _to_system)."""
    base = index * PMD_PAGES
    head = mm.pmds[index].head
    device = world.folios[head].device
    mapped = _mappings(world, head, "a device THP coming back")
    others = {(other_id, vpn) for other_id, vpn, _ in mapped if other_id != mm_id}
    # vma_alloc_folio(GFP_HIGHUSER_MOVABLE, order) may reclaim and compact: its failure
    # (small pages, as with FAIL_ALLOC) is assumed away like other allocation failures
    large = not (mirror is not None and mirror.flags & FAIL_ALLOC)
    if others and not large:
        raise Unmodelled("a device THP mapped by several processes coming back as small "
                         "pages", "migrate_vma_split_unmapped_folio splits the PMD "
                         "migration entry of this process only (docs/findings.md #17)")
    invalidate(world, mm_id, base, base + PMD_PAGES, migrating_device=device)
    if others:
        rmap.unmap_walk_large(world, mm_id, base, PMD_PAGES, others)
    if mirror is not None:
        for vpn in pmd_range(index):
            mirror.table.pop(vpn, None)
    if not large:
        mirror.flags &= ~FAIL_ALLOC
        mm.tables[index] = True
        invalidate(world, mm_id, base, base + PMD_PAGES)
    _to_system(world, mapped, large, vmas.alloc_node(mm.vma_at(base)), mirror_id)
    return large


def _to_system(world: World, mapped: list[tuple[int, int, int]], large: bool, node: int,
               keeper) -> None:
    """The device THP whose pages `mapped` maps ((mm id, vpn, device folio id), each page
    mapped at least once) becomes a new folio in system memory (a THP if `large`), mapped
    where it was: remove_migration_pmd for a PMD, remove_migration_pte per page for PTEs,
    each with that entry's bits; PageAnonExclusive as it was (RMAP_EXCLUSIVE unless a
    readable migration entry, and a readable device entry of a non-exclusive page makes
    one: set_pmd_migration_entry, try_to_migrate_one). The device folio is freed; other
    dmirrors of those mms pointing at it keep a STALE entry."""
    from .device import _stale_other_entries
    by_index = {world.folios[folio_id].thp_index: folio_id for _, _, folio_id in mapped}
    new_ids = {i: world.new_id() for i in sorted(by_index)}
    head = new_ids[min(new_ids)]
    for i, old_id in sorted(by_index.items()):
        old = world.folios[old_id]
        world.folios[new_ids[i]] = Folio(old.content, old.mapcount, old.exclusive, node=node,
                                         thp=head if large else None,
                                         thp_index=i if large else 0)
    for mm_id, vpn, old_id in mapped:
        mm = world.mms[mm_id]
        pte = mm.ptes[vpn]
        new = new_ids[world.folios[old_id].thp_index]
        mm.ptes[vpn] = Pte(Kind.PRESENT, new, pte.writable, clean=True,
                           soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp)
        _stale_other_entries(world, mm_id, keeper, vpn, old_id)
        pmd = mm.pmds.get(pmd_of(vpn))
        if pmd is not None and pmd.device:
            if large:
                mm.pmds[pmd_of(vpn)] = Pmd(head)
                mm.tables.pop(pmd_of(vpn), None)
            else:
                mm.pmds.pop(pmd_of(vpn), None)
                mm.tables[pmd_of(vpn)] = True
    for old_id in by_index.values():
        del world.folios[old_id]


def evict(world: World, device: str) -> None:
    """dmirror_device_evict_chunk for the device THPs of `device`: migrate_device_range
    takes each folio by its head PFN; migrate_device_unmap -> try_to_migrate fires
    MMU_NOTIFY_CLEAR over each VMA's part of the folio's 2 MiB in every process mapping it
    (after fork, several; maybe in other VMAs over its page offsets:
    rmap.unmap_walk_large); then folio_alloc(GFP_HIGHUSER_MOVABLE, order) with
    MIGRATE_PFN_COMPOUND ("TODO Support splitting here": no fallback, the model states the
    allocation succeeds), on the local node, and remove_migration_pmd maps a THP by its
    PMD where a PMD mapped it (remove_migration_pte by PTEs where a process split its PMD).
    A device THP no PMD maps comes back as a THP mapped by the same PTEs
    (_evict_pte_mapped)."""
    for mm_id, mm in world.mms.items():
        for index in sorted(i for i, pmd in mm.pmds.items() if pmd.device):
            pmd = mm.pmds.get(index)
            if pmd is None or not pmd.device or world.folios[pmd.head].device != device:
                continue    # another device's, or already back with a process sharing it
            mapped = _mappings(world, pmd.head, "evicting a device THP")
            rmap.unmap_walk_large(world, mm_id, index * PMD_PAGES, PMD_PAGES,
                                  {(other_id, vpn) for other_id, vpn, _ in mapped})
            _to_system(world, mapped, True, vmas.LOCAL_NODE, None)
    for mm_id, mm in world.mms.items():
        heads = {}
        for vpn, pte in sorted(mm.ptes.items()):
            if _large_device_page(world, pte) and world.folios[pte.folio].device == device:
                heads.setdefault(world.folios[pte.folio].thp, []).append(vpn)
        for mapped in heads.values():
            _evict_pte_mapped(world, mm_id, mm, mapped)


def _evict_pte_mapped(world: World, mm_id: int, mm: Mm, mapped: list) -> None:
    from .device import _stale_other_entries
    base = _base(world, mapped[0], mm.ptes[mapped[0]])
    if any(world.folios[mm.ptes[vpn].folio].mapcount > 1 for vpn in mapped):
        raise Unmodelled("evicting a device THP mapped by PTEs and by several processes",
                         "try_to_migrate over those mappings is not followed")
    thp_split.try_to_migrate_notifiers(world, mm_id, mm, base, mapped)
    head = world.new_id()      # page 0's, which may be unmapped
    for vpn in mapped:
        pte = mm.ptes[vpn]
        old = world.folios[pte.folio]
        folio = head if vpn == base else world.new_id()
        world.folios[folio] = Folio(old.content, 1, old.exclusive, node=vmas.LOCAL_NODE,
                                    thp=head, thp_index=vpn - base)
        mm.ptes[vpn] = Pte(Kind.PRESENT, folio, pte.writable, clean=True,
                           soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp)
        _stale_other_entries(world, mm_id, None, vpn, pte.folio)
        del world.folios[pte.folio]


# ------------------------------------------------------------------ the device's view

def snapshot_byte(world: World, mirror, mm: Mm, vpn: int, byte: int) -> int:
    """hmm_vma_handle_absent_pmd: a device-private PMD of another device needs no fault for
    a snapshot, and hmm_pfns_fill reports HMM_PFN_ERROR for it: HMM_DMIRROR_PROT_ERROR
    (one of this device: hmm_vma_handle_pte's answer with map order PMD, thp.snapshot_byte)."""
    pmd = device_pmd(mm, pmd_of(vpn))
    if pmd is not None and world.folios[pmd.head].device != mirror.device:
        return PROT_ERROR
    return byte


# ------------------------------------------------------------------ what is not stated yet

# fork: copy_huge_non_present_pmd shares the device folio (folio_try_dup_anon_rmap_pmd) and
# makes a writable entry readable in both, as copy_nonpresent_pte does per page; mprotect:
# change_non_present_huge_pmd makes a writable entry readable (without its soft-dirty bit),
# as change_softleaf_pte does per page; a VMA boundary inside splits the PMD first;
# mremap: move_huge_pmd moves the device-private PMD, or it is split (remap_thp.py).
_STATED = (MigrateToDev, MigrateToSys, CpuRead, CpuWrite, DevRead, DevWrite, Snapshot,
           Pagemap, Release, CloseDevice, Exit, Munmap, Map, OpenDevice, Flags,
           CheckExclusive, Thp, Fork, Mprotect, Mremap, Smaps)


def _meets(world: World, mm: Mm, start: int | None, end: int | None) -> bool:
    """Whether [start, end) (everything if None) has a page of a device THP."""
    ptes = mm.ptes
    vpns = ptes if start is None else (v for v in range(start, end) if v in ptes)
    return any(_large_device_page(world, ptes[v]) for v in vpns)


def guard(world: World, op, places) -> None:
    """Refuse an op not stated for device THPs where it meets a page of one."""
    if isinstance(op, _STATED) or not any(
            f.device is not None and f.thp is not None for f in world.folios.values()):
        return
    if isinstance(op, Madvise) and op.advice is Advice.DONTNEED:
        return    # zap_huge_pmd / __split_huge_pmd of a device-private PMD, as for a THP
    if isinstance(op, Madvise) and op.advice in thp_split.LRU_ADVICE:
        return    # they leave device-private entries alone (thp_split.before_advice)
    if op_meets(world, op, places, _meets):
        raise Unmodelled(f"{op_name(op)} on a device THP", "not stated for device THPs yet")
