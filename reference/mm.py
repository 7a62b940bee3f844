"""The CPU side: page faults, COW, device-exclusive restore, and MMU-notifier invalidation.

Each function changes the World the way the named kernel function changes the page tables,
and calls `invalidate` wherever that function fires an MMU notifier, because that is what
the dmirror observes (dmirror_interval_invalidate erases its entries in the range; it
ignores only MMU_NOTIFY_MIGRATE events it caused itself, which v1 ops never raise).
"""

from __future__ import annotations

from dataclasses import replace

from harness.prog import ZERO

from . import reclaim, shmem, thp, vma as vmas
from .refuse import Unmodelled
from .state import ZERO_PTE, Dmirror, Kind, Mm, Pte, Vma, World
from .uffd_shmem import drop_markers
from .uffd_wp import check_write, protected


def invalidate(world: World, mm_id: int, start: int, end: int,
               migrating_device: str | None = None) -> None:
    """An MMU notifier invalidation of [start, end) on mm `mm_id`: every dmirror bound to
    that mm erases its entries there (dmirror_interval_invalidate -> dmirror_do_update).

    Quirk of the test driver, modelled because cpages/faults depend on it: dmirror_do_update
    erases with xa_for_each_range(..., start >> PAGE_SHIFT, end >> PAGE_SHIFT), whose last
    index is inclusive, so the page just past the range loses its mirror entry too (same
    code in 6.1, 6.12 and 7.2; see docs/findings.md). Observed: exclusive on pages 0..22, then a
    device read of pages 22..23 faults once, because page 23 was erased.

    `migrating_device`: the event is MMU_NOTIFY_MIGRATE raised by migrate_vma_collect()
    with that device as pgmap owner; dmirror_interval_invalidate ignores it in every dmirror
    of that device ("the invalidation is handled as part of the migration process").
    """
    for mirror in world.mirrors_of(mm_id):
        if mirror.device != migrating_device:
            _erase(mirror, start, end + 1)


def _erase(mirror: Dmirror, start: int, end: int) -> None:
    table = mirror.table
    if not table:
        return
    if end - start <= len(table):
        for vpn in range(start, end):
            table.pop(vpn, None)
    else:
        for vpn in [v for v in table if start <= v < end]:
            del table[vpn]


def restore_exclusive(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> None:
    """A CPU (or hmm/GUP) fault on a device-exclusive entry: do_swap_page ->
    remove_device_exclusive_entry fires MMU_NOTIFY_CLEAR on the page, then
    restore_exclusive_pte maps the folio again, writable only if the VMA has VM_WRITE and
    the page is still PageAnonExclusive (can_change_pte_writable)."""
    pte = mm.ptes[vpn]
    invalidate(world, mm_id, vpn, vpn + 1)
    mm.ptes[vpn] = _restored(world, vma, pte)


def _restored(world: World, vma: Vma, pte: Pte) -> Pte:
    if world.profile.exclusive_entry_permission:
        # 6.1/6.12 restore_exclusive_pte: maybe_mkwrite(pte_mkdirty(pte)) only for a
        # writable entry; pte_mkdirty sets the soft-dirty bit too on x86.
        writable = vma.prot.writable and pte.writable
        return Pte(Kind.PRESENT, pte.folio, writable, soft_dirty=pte.soft_dirty or pte.writable,
                   uffd_wp=pte.uffd_wp)   # pte_swp_uffd_wp -> pte_mkuffd_wp
    else:
        # can_change_pte_writable -> maybe_change_pte_writable
        writable = vma.prot.writable and world.folios[pte.folio].exclusive and \
            not needs_soft_dirty_wp(vma, pte) and not protected(vma, pte)
    return Pte(Kind.PRESENT, pte.folio, writable, soft_dirty=pte.soft_dirty,
               uffd_wp=pte.uffd_wp)   # pte_swp_uffd_wp -> pte_mkuffd_wp


def needs_soft_dirty_wp(vma: Vma, pte: Pte) -> bool:
    """pte_needs_soft_dirty_wp: soft-dirty tracking is on for the VMA (no VM_SOFTDIRTY)
    and the PTE is not soft-dirty, so only a write fault may make it writable (it then
    sets the bit); can_change_pte_writable and do_swap_page ask this."""
    return not vma.softdirty and not pte.soft_dirty


PMD_PAGES = 512  # pages mapped by one PMD entry (HPAGE_PMD_SIZE, 2 MiB)


def split_pmd(world: World, mm_id: int, vma: Vma, vpn: int) -> None:
    """A VMA boundary moves to `vpn` inside `vma` (its range before the change):
    vma_adjust_trans_huge -> split_huge_pmd_if_needed(vma, address) (mm/huge_memory.c).

    When the address is not PMD-aligned and the VMA covers the whole aligned 2 MiB around it
    (range_in_vma), split_huge_pmd_address() asks mm_find_pmd(), which returns the PMD slot
    whenever the PUD entry is present, huge or not; __split_huge_pmd() then fires
    MMU_NOTIFY_CLEAR over [address & HPAGE_PMD_MASK, +HPAGE_PMD_SIZE) before it looks at
    the PMD. With only 4 KiB pages nothing is split, but every dmirror entry of that 2 MiB
    (and, by the dmirror_do_update quirk, of the page after it) is erased. Same code in
    6.1, 6.12 and 7.2 with CONFIG_TRANSPARENT_HUGEPAGE=y (the project's config); unlike
    split_huge_pmd() it does not check pmd_is_huge() first (docs/findings.md #2).
    Observed: region d[512:1024] is one VMA, d[540] is mirrored writable, munmap d[537:538]
    -> the next dev_write of d[540] faults once.

    mm_find_pmd() returns NULL when the 1 GiB range has no PMD table; the model does not
    track page tables, because then no page of that range has a PTE and so no dmirror entry
    (hmm_range_fault stores only valid pages and every zap erases them) -- the page past the
    2 MiB included, as no region reaches the end of its 1 GiB slot.
    """
    offset = vpn % PMD_PAGES
    if not offset:
        return
    base = vpn - offset
    if vma.start <= base and base + PMD_PAGES <= vma.end:
        invalidate(world, mm_id, base, base + PMD_PAGES)
        thp.split_pmd_mapping(world.mms[mm_id], base // PMD_PAGES)


def read_fault(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> None:
    """handle_mm_fault without FAULT_FLAG_WRITE on a readable VMA."""
    pte = mm.ptes.get(vpn)
    if pte is None and vma.obj is not None:
        shmem.read_fault(world, mm, vma, vpn)  # do_read_fault
        return
    if pte is None:
        if thp.huge_fault_allowed(world, mm, vma, vpn):
            thp.huge_read_fault(world, mm, vpn)
            return
        # do_anonymous_page: "Use the zero-page for reads"; no anon_vma is needed.
        mm.ptes[vpn] = ZERO_PTE
    elif pte.kind is Kind.EXCLUSIVE:
        restore_exclusive(world, mm_id, mm, vma, vpn)
    elif pte.kind is Kind.DEVICE:
        from .device import devmem_fault
        devmem_fault(world, mm_id, mm, vpn)
    elif pte.kind is Kind.SWAP:
        reclaim.swap_in(world, mm, vma, vpn, write=False)


def write_fault(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> None:
    """handle_mm_fault with FAULT_FLAG_WRITE on a VMA with VM_WRITE; afterwards the page is
    mapped writable (and dirty) by an exclusive anonymous folio. A PTE already present and
    writable takes no fault (GUP and hmm_range_fault just use it)."""
    pte = mm.ptes.get(vpn)
    if pte is not None and pte.kind is Kind.PRESENT and pte.writable:
        return
    pmd = mm.pmds.get(vpn // PMD_PAGES)
    if pmd is not None and pmd.device:
        # do_huge_pmd_device_private brings the device THP back (device_thp.devmem_fault);
        # a writable entry comes back writable (no pte_mkdirty, as below), else the write
        # is retried on the THP PMD or the small pages it left
        from .device import devmem_fault
        devmem_fault(world, mm_id, mm, vpn)
        if mm.ptes[vpn].writable:
            reclaim.dirtied(world, mm, vpn)
            return
    if vpn // PMD_PAGES in mm.pmds:
        # wp_huge_pmd: userfaultfd_huge_pmd_wp -> handle_userfault before
        # do_huge_pmd_wp_page (and for the huge zero page before do_huge_zero_wp_pmd)
        check_write(vma, mm.ptes.get(vpn), vpn)
        if thp.pmd_write_fault(world, mm_id, mm, vma, vpn):
            return
    pte = mm.ptes.get(vpn)
    back_writable = pte is not None and pte.kind is Kind.DEVICE and pte.writable
    _write_fault(world, mm_id, mm, vma, vpn)
    reclaim.dirtied(world, mm, vpn)
    if back_writable:
        # A writable device-private entry comes back through migrate_to_ram and
        # remove_migration_pte, mapped writable with the entry's soft-dirty bit and no
        # pte_mkdirty (the migration entry made from a device-private one is not dirty):
        # the write needs no further fault, so nothing marks it (findings 8 and 9).
        return
    # every other write fault maps the page with pte_mkdirty, which on x86 sets soft-dirty
    mm.ptes[vpn] = replace(mm.ptes[vpn], soft_dirty=True)


def _write_fault(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> None:
    pte = mm.ptes.get(vpn)
    if pte is None and vma.obj is not None:
        shmem.write_fault(world, mm, vma, vpn)  # do_shared_fault / do_cow_fault
        return
    if pte is None:
        if thp.huge_fault_allowed(world, mm, vma, vpn) and \
                thp.huge_write_fault(world, mm, vma, vpn):
            return
        # do_anonymous_page: vmf_anon_prepare, then a zeroed folio mapped writable.
        vmas.anon_prepare(world, mm, vpn)
        mm.ptes[vpn] = Pte(Kind.PRESENT, world.new_folio(ZERO, vmas.alloc_node(vma)), True)
        return
    if pte.kind is Kind.EXCLUSIVE:
        restore_exclusive(world, mm_id, mm, vma, vpn)
        pte = mm.ptes[vpn]
        if pte.writable:
            return
    if pte.kind is Kind.DEVICE:
        # do_swap_page -> migrate_to_ram (dmirror_devmem_fault) brings the page back with the
        # entry's permission; a read-only result takes the write fault again (do_wp_page).
        from .device import devmem_fault
        devmem_fault(world, mm_id, mm, vpn)
        pte = mm.ptes[vpn]
    if pte.kind is Kind.SWAP:
        # do_swap_page maps it writable at once if exclusive; else read-only, then do_wp_page.
        reclaim.swap_in(world, mm, vma, vpn, write=True)
        pte = mm.ptes[vpn]
    if pte.writable:
        return
    check_write(vma, pte, vpn)   # do_wp_page: userfaultfd_pte_wp -> handle_userfault
    if pte.kind is Kind.ZERO:
        # do_wp_page: the zero page is not a normal page -> wp_page_copy (MMU_NOTIFY_CLEAR
        # on the page) into a newly allocated zeroed folio.
        vmas.anon_prepare(world, mm, vpn)
        invalidate(world, mm_id, vpn, vpn + 1)
        mm.ptes[vpn] = Pte(Kind.PRESENT, world.new_folio(ZERO, vmas.alloc_node(vma)), True)
        return
    if world.folios[pte.folio].page_cache:
        shmem.write_protected(world, mm_id, mm, vma, vpn)
        return
    _write_protected_anon(world, mm_id, mm, vpn, pte)


def _write_protected_anon(world: World, mm_id: int, mm: Mm, vpn: int, pte: Pte) -> None:
    """do_wp_page on a read-only PTE of an anonymous folio."""
    folio = world.folios[pte.folio]
    if folio.exclusive:
        # PageAnonExclusive: "we must reuse the page without further checks" (wp_page_reuse,
        # no MMU notifier: permissions only grow).
        mm.ptes[vpn] = replace(pte, writable=True)
        return
    if folio.mapcount > 1 or folio.ksm or folio.swap_slot is not None:
        # Still mapped by another process, a KSM folio (wp_can_reuse_anon_folio never
        # reuses one), or in the swap cache of a slot other swap entries refer to
        # (wp_can_reuse_anon_folio: folio_free_swap fails, the swap cache keeps its
        # reference): wp_page_copy (MMU_NOTIFY_CLEAR on the page).
        invalidate(world, mm_id, vpn, vpn + 1)
        world.unmap_folio(pte.folio)
        copy = world.new_folio(folio.content, vmas.alloc_node(mm.vma_at(vpn)))
        mm.ptes[vpn] = Pte(Kind.PRESENT, copy, True)
        return
    if folio.thp is not None:
        # A page of a THP: wp_can_reuse_anon_folio asks __wp_can_reuse_large_anon_folio
        # (the whole folio mapped by this mm only, mapcount == refcount), not stated yet.
        raise Unmodelled("a write to a page of a THP mapped once but not exclusive",
                         "__wp_can_reuse_large_anon_folio is not stated yet")
    # Mapped once but not exclusive (the other side of a fork already copied or unmapped it):
    # wp_can_reuse_anon_folio reuses it only if folio_ref_count() == 1 after lru_add_drain(),
    # which drains only this CPU's LRU batch; a folio still sitting in another CPU's batch, or
    # held for a moment by anyone else (isolation by compaction or reclaim), has an extra
    # reference and is copied by wp_page_copy, which fires MMU_NOTIFY_CLEAR over the page.
    # Both are allowed. The content and the PTE are the same either way (a copy is
    # indistinguishable from the original for every v1 observation), so the model keeps the
    # folio and marks the entries the notifier would erase as possibly erased: the page's
    # own and, by the dmirror_do_update quirk (docs/findings.md #1), the next page's, of any
    # tag. The ops that look at them branch (hmm.settle). The two marks are resolved
    # independently, which also allows the next page's entry to go while this one stays: a
    # slight over-approximation, kept because tracking the pair costs more than it is worth.
    for mirror in world.mirrors_of(mm_id):
        for page in (vpn, vpn + 1):
            entry = mirror.table.get(page)
            if entry is not None:
                mirror.table[page] = replace(entry, maybe_gone=True)
    # A copy would be a new swap-backed folio, a reuse keeps a lazyfree one lazyfree.
    reclaim.lost_track(world, pte.folio)
    folio = world.folios[pte.folio]
    # A copy would have another PFN: forget the one a pagemap op showed. It would also be
    # allocated by the VMA's policy (wp_page_copy -> folio_prealloc), which may name
    # another node than the one the folio is on: then its node is no longer known.
    world.pfns.pop(("pfn", pte.folio), None)
    node = folio.node if folio.node == vmas.alloc_node(mm.vma_at(vpn)) else None
    world.folios[pte.folio] = replace(folio, exclusive=True, node=node)
    mm.ptes[vpn] = replace(pte, writable=True)


def munmap(world: World, mm_id: int, start: int, end: int) -> None:
    """do_vmi_munmap of [start, end): nothing at all if no VMA lies in it (vma_find() finds
    none -> return 0); else split at the edges (each split may fire split_pmd's notifier),
    zap, one MMU_NOTIFY_UNMAP over the whole range."""
    mm = world.mms[mm_id]
    if not vmas.overlaps(mm, start, end):
        return
    for vma, vpn in vmas.unmap(mm, start, end):
        split_pmd(world, mm_id, vma, vpn)
    zap(world, mm_id, mm, start, end)
    drop_markers(mm, start, end)   # unmap_vmas: ZAP_FLAG_DROP_MARKER
    thp.free_pgtables(mm, start, end)


def populate_page(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int,
                  write: bool) -> None:
    """GUP of one page with FOLL_TOUCH (and FOLL_WRITE): fault it in like a CPU access;
    FOLL_TOUCH with FOLL_WRITE marks the folio dirty (follow_page_pte)."""
    (write_fault if write else read_fault)(world, mm_id, mm, vma, vpn)
    if write:
        reclaim.dirtied(world, mm, vpn)


def zap(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """Unmap [start, end), which overlaps at least one VMA (do_vmi_munmap returns before
    anything when vma_find() finds none): unmap_vmas zaps the PTEs (dropping folio mappings,
    device-exclusive entries included) under one MMU_NOTIFY_UNMAP invalidation of the whole
    range asked for (unmap_desc.vma_start/vma_end), holes included."""
    thp.zap_pmds(world, mm_id, mm, start, end)
    ptes = mm.ptes
    if end - start <= len(ptes):
        vpns = [v for v in range(start, end) if v in ptes]
    else:
        vpns = [v for v in ptes if start <= v < end]
    for vpn in vpns:
        pte = ptes.pop(vpn)
        if pte.kind is not Kind.ZERO:
            world.unmap_folio(pte.folio)
    invalidate(world, mm_id, start, end)


def change_protection(world: World, mm_id: int, mm: Mm, start: int, end: int,
                      uffd_wp: bool | None = None) -> None:
    """change_protection over [start, end) after the VMA got its new flags.

    change_pud_range fires MMU_NOTIFY_PROTECTION_VMA over [addr, end) from the first PUD entry
    that is not none (mm/mprotect.c, 7.2; older kernels from the first populated PMD in
    change_pmd_range): without page tables no entry can be mirrored, the page past the range
    included (see split_pmd), so the model simply invalidates the range. Present PTEs
    take the VMA's protection (pte_modify: read-only for a private VMA); when the VMA is
    writable, PTEs of PageAnonExclusive folios become writable at once
    (MM_CP_TRY_CHANGE_WRITABLE, can_change_private_pte_writable), the zero page, shared
    folios and uffd-wp PTEs (maybe_change_pte_writable) stay read-only. Device-exclusive
    entries are left alone in 7.2; older kernels make writable ones readable
    (profile.exclusive_entry_permission).

    `uffd_wp` (uffd_wp_range, uffd.py): True is MM_CP_UFFD_WP (every present PTE, the zero
    page included, gets the bit, and there is no MM_CP_TRY_CHANGE_WRITABLE: all stay
    read-only); False is MM_CP_UFFD_WP_RESOLVE (the bit goes, then as for mprotect); None
    (mprotect) keeps the bit (pte_modify keeps _PAGE_UFFD_WP). 6.1 un-protects without
    MM_CP_TRY_CHANGE_WRITABLE (profile.uffd_unprotect_read_only).
    """
    ptes = mm.ptes
    vma = mm.vma_at(start)
    try_writable = uffd_wp is None or \
        (uffd_wp is False and not world.profile.uffd_unprotect_read_only)
    writable = vma.prot.writable and try_writable
    entry_permission = world.profile.exclusive_entry_permission
    for vpn in range(start, end) if end - start <= len(ptes) else sorted(ptes):
        if not start <= vpn < end:
            continue
        pte = ptes.get(vpn)
        if pte is None:
            continue
        if uffd_wp is not None:
            # change_present_ptes / change_softleaf_pte: pte_(swp_)mkuffd_wp or the clear
            pte = ptes[vpn] = replace(pte, uffd_wp=uffd_wp)
        if pte.kind is Kind.ZERO:
            continue
        if pte.kind is Kind.PRESENT and vma.shared:
            # pte_modify(newprot): vm_page_prot has the write bit iff VM_WRITE without
            # writenotify (shmem.py). With writenotify there is no MM_CP_TRY_CHANGE_WRITABLE
            # either: vma_wants_manual_pte_write_upgrade -> vma_wants_writenotify(vma,
            # vma->vm_page_prot) finds the write-protected vm_page_prot differ from
            # vm_pgprot_modify(vm_page_prot, vm_flags) ("The open routine did something to
            # the protections") and says no, so even a dirty soft-dirty PTE stays read-only
            # (observed on 7.2.13, 6.12.117, 6.1.192)
            shared_writable = shmem.prot_writable(vma)
            if uffd_wp is False and world.profile.uffd_unprotect_ignores_writenotify:
                # 6.1 uffd_wp_range: newprot = vm_get_page_prot(vm_flags), without the
                # writenotify of vm_page_prot (docs/findings.md #14)
                shared_writable = vma.prot.writable
            ptes[vpn] = replace(pte, writable=shared_writable)
        elif pte.kind is Kind.PRESENT:
            # 6.1 can_change_pte_writable also wants the PTE dirty.
            dirty_enough = not (world.profile.mprotect_writable_needs_dirty and pte.clean)
            ptes[vpn] = replace(pte, writable=writable and world.folios[pte.folio].exclusive
                                and dirty_enough and not needs_soft_dirty_wp(vma, pte)
                                and not protected(vma, pte))
        elif pte.kind is Kind.DEVICE:
            # change_softleaf_pte: a writable device-private entry becomes readable whatever
            # the new protection; nothing makes it writable again.
            ptes[vpn] = replace(pte, writable=False)
        elif pte.kind is Kind.SWAP:
            continue  # change_pte_range leaves swap entries alone
        elif entry_permission and pte.writable:
            ptes[vpn] = replace(pte, writable=False)  # make_readable_device_exclusive_entry
    invalidate(world, mm_id, start, end)


def fork(world: World, parent_id: int, child_id: int) -> None:
    """dup_mmap + copy_page_range for every VMA of the parent."""
    parent = world.mms[parent_id]
    child_vmas = vmas.fork_vmas(world, parent)
    child_ptes: dict[int, Pte] = {}
    copied = []
    for vma in parent.vmas:
        if vma.anon is None or vma.flags & {"dontcopy", "wipeonfork"}:
            # Not copied (VM_DONTCOPY), or copy_page_range is not called (VM_WIPEONFORK), or
            # vma_needs_copy is false: no page table is copied (the child faults the zero
            # page in again) and no MMU notifier fires for this VMA.
            continue
        copied.append(vma)
        # is_cow_mapping: MMU_NOTIFY_PROTECTION_PAGE over the whole parent VMA.
        invalidate(world, parent_id, vma.start, vma.end)
        for vpn in _vpns_in(parent, vma.start, vma.end):
            # The child's VMA is not registered (dup_userfaultfd without
            # UFFD_FEATURE_EVENT_FORK): __copy_present_ptes / copy_nonpresent_pte clear
            # the uffd-wp bit for a VMA without userfaultfd_wp.
            child_ptes[vpn] = replace(_copy_pte(world, parent, vma, vpn), uffd_wp=False)
    world.mms[child_id] = Mm(child_vmas, child_ptes)
    thp.fork_pmds_and_tables(parent, world.mms[child_id], copied)


def _copy_pte(world: World, parent: Mm, vma: Vma, vpn: int) -> Pte:
    pte = parent.ptes[vpn]
    if pte.kind is Kind.ZERO:
        return pte  # the zero page is copied as is (copy_present_ptes: not a normal page)
    if pte.kind is Kind.SWAP:
        # copy_nonpresent_pte: swap_dup_entry_direct (one more reference to the slot) and
        # "Mark the swap entry as shared": the exclusive bit goes in the parent's PTE too.
        slot = world.folios[pte.folio]
        world.folios[pte.folio] = replace(slot, mapcount=slot.mapcount + 1, exclusive=False)
        return pte
    if pte.kind is Kind.DEVICE:
        # copy_nonpresent_pte: folio_try_dup_anon_rmap_pte (no longer PageAnonExclusive), and
        # a writable device-private entry becomes readable in both (is_cow_mapping).
        folio = world.folios[pte.folio]
        world.folios[pte.folio] = replace(folio, mapcount=folio.mapcount + 1, exclusive=False)
        shared = replace(pte, writable=False)
        parent.ptes[vpn] = shared
        return shared
    if pte.kind is Kind.EXCLUSIVE:
        # copy_nonpresent_pte: "Make device exclusive entries present by restoring the
        # original entry then copying as for a present pte" (try_restore_exclusive_pte; no
        # notifier of its own, the fork's range notifier above covers it).
        pte = _restored(world, vma, pte)
    # __copy_present_ptes: write-protect the PTE in both processes;
    # folio_try_dup_anon_rmap_pte clears PageAnonExclusive.
    folio = world.folios[pte.folio]
    world.folios[pte.folio] = replace(folio, mapcount=folio.mapcount + 1, exclusive=False)
    shared = replace(pte, writable=False)
    parent.ptes[vpn] = shared
    return shared


def _vpns_in(mm: Mm, start: int, end: int) -> list[int]:
    ptes = mm.ptes
    if end - start <= len(ptes):
        return [v for v in range(start, end) if v in ptes]
    return sorted(v for v in ptes if start <= v < end)
