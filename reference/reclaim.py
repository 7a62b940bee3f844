"""Reclaim and swap: madvise pageout and cold, lazyfree folios (madvise free), and the swap-in
fault (do_swap_page). The runner swaps on a zram disk (256 MiB, SWP_SYNCHRONOUS_IO), so a
page reclaim writes out is really a swap entry afterwards and comes back on the next fault.

Sources: mm/madvise.c (madvise_cold_or_pageout_pte_range, madvise_free_pte_range),
mm/vmscan.c (reclaim_pages, shrink_folio_list), mm/rmap.c (try_to_unmap_one), mm/memory.c
(do_swap_page, copy_nonpresent_pte), 7.2, with the 6.1/6.12 differences in profile.py.
"""

from __future__ import annotations

from dataclasses import replace

from .refuse import Unmodelled
from .state import Folio, Kind, Lazyfree, Mm, Pte, Vma, World
from .uffd_wp import protected
from .vma import alloc_node

# The zram swap device holds 256 MiB: 65535 slots. Far below that, reclaim of a program's
# pages cannot fail for want of swap space (add_to_swap); the model refuses beyond.
SWAP_SLOTS_STATED = 32768
# Each lazyfree folio of unknown dirty state triples the possible states; past a few the
# model refuses instead.
MAX_UNKNOWN_RECLAIMED = 3


def swap_slots_in_use(world: World) -> int:
    return sum(1 for folio in world.folios.values() if folio.swapped)


def _isolated(world: World, mm: Mm, vpn: int) -> int | None:
    """madvise_cold_or_pageout_pte_range: the folio at `vpn` it puts on the reclaim list, or
    None. Only present normal folios (not the zero page: vm_normal_folio; not device pages:
    folio_is_zone_device; not swap, device-private or device-exclusive entries: !pte_present)
    mapped exactly once ("Do not interfere with other mappings of this folio":
    folio_mapcount != folio_nr_pages). madvise_pageout drains this CPU's LRU batch first
    (lru_add_drain) and the runner runs every process on one CPU, so every such folio is on
    the LRU and folio_isolate_lru takes it."""
    pte = mm.ptes.get(vpn)
    if pte is None or pte.kind is not Kind.PRESENT:
        return None
    folio = world.folios[pte.folio]
    if folio.mapcount != 1 or folio.device is not None:
        return None
    return pte.folio


def pageout(world: World, mm_id: int, pieces: list[tuple[int, int]]) -> list[World]:
    """MADV_PAGEOUT over each VMA's part of the range: reclaim_pages -> shrink_folio_list
    (ignore_references) -> try_to_unmap -> try_to_unmap_one, which fires MMU_NOTIFY_CLEAR
    over the page before it decides anything (so every dmirror of the mm loses the page and,
    by the dmirror_do_update quirk, the next one, even when the page stays). Then:

    - a swap-backed folio goes to swap (add_to_swap, folio_dup_swap): the PTE becomes a swap
      entry, exclusive iff the page was PageAnonExclusive; zram writes synchronously, so
      __remove_mapping frees the folio at once (its content lives in the slot);
    - a lazyfree folio (madvise free) that nothing dirtied is discarded (the "MADV_FREE page
      check": not dirty and ref_count == 1 + mapcount -> discard): pte_none, it reads zero;
    - a lazyfree folio a store dirtied is mapped again and becomes swap-backed
      (folio_set_swapbacked; goto walk_abort): it stays, and the next pageout swaps it.

    A folio whose dirty state the model did not follow (Lazyfree.UNKNOWN) may end any of
    those three ways: the outcomes branch."""
    mm = world.mms[mm_id]
    unknown = [vpn for start, end in pieces for vpn in range(start, end)
               if _isolated(world, mm, vpn) is not None
               and world.folios[mm.ptes[vpn].folio].lazyfree is Lazyfree.UNKNOWN]
    if len(unknown) > MAX_UNKNOWN_RECLAIMED:
        raise Unmodelled("madvise pageout of many lazyfree pages whose dirty state is not "
                         "known", "each of them may be discarded, swapped or kept")
    worlds = [world]
    for start, end in pieces:
        for vpn in range(start, end):
            worlds = [after for w in worlds for after in _reclaim_page(w, mm_id, vpn)]
    return worlds


def _reclaim_page(world: World, mm_id: int, vpn: int) -> list[World]:
    from .rmap import unmap_walk

    mm = world.mms[mm_id]
    folio_id = _isolated(world, mm, vpn)
    if folio_id is None:
        return [world]
    # try_to_unmap's rmap walk: the CLEAR here, maybe others in VMAs over the same page
    # offset that do not map it (after fork; rmap.py)
    unmap_walk(world, mm_id, vpn, [(mm_id, vpn)])
    if world.folios[folio_id].page_cache:
        from .shmem import reclaim_cache_page
        reclaim_cache_page(world, mm, vpn)
        return [world]
    lazyfree = world.folios[folio_id].lazyfree
    if lazyfree is Lazyfree.CLEAN:
        _discard(world, mm, vpn)
    elif lazyfree is Lazyfree.DIRTY:
        world.folios[folio_id] = replace(world.folios[folio_id], lazyfree=None)
    elif lazyfree is None:
        _swap_out(world, mm, vpn)
    else:
        discarded, kept = world.clone(), world.clone()
        _discard(discarded, discarded.mms[mm_id], vpn)
        _swap_out(world, mm, vpn)
        return [world, discarded, kept]
    return [world]


def _discard(world: World, mm: Mm, vpn: int) -> None:
    pte = mm.ptes.pop(vpn)
    del world.folios[pte.folio]


def _swap_out(world: World, mm: Mm, vpn: int) -> None:
    if swap_slots_in_use(world) >= SWAP_SLOTS_STATED:
        raise Unmodelled("madvise pageout with the swap device nearly full",
                         "add_to_swap may fail")
    pte = mm.ptes[vpn]
    folio = world.folios.pop(pte.folio)
    if folio.swap_slot is not None:
        # A folio already in the swap cache keeps its slot (no add_to_swap):
        # try_to_unmap_one takes another reference on it (folio_dup_swap), and the folio
        # leaves the swap cache (__remove_mapping). It was never PageAnonExclusive.
        slot = world.folios[folio.swap_slot]
        world.folios[folio.swap_slot] = replace(slot, mapcount=slot.mapcount + 1, cache=None,
                                                swapcache=False, exclusive=False)
        # try_to_unmap_one: pte_swp_mksoft_dirty, pte_swp_mkuffd_wp, as below
        mm.ptes[vpn] = Pte(Kind.SWAP, folio.swap_slot, soft_dirty=pte.soft_dirty,
                           uffd_wp=pte.uffd_wp)
        return
    slot = world.new_id()
    world.folios[slot] = Folio(folio.content, 1, folio.exclusive, swapped=True)
    # try_to_unmap_one: pte_swp_mksoft_dirty, pte_swp_mkuffd_wp
    mm.ptes[vpn] = Pte(Kind.SWAP, slot, soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp)


def willneed(world: World, mm: Mm, start: int, end: int) -> None:
    """madvise_willneed on an anonymous VMA: swapin_walk_ops reads every swap entry of the
    range into the swap cache (read_swap_cache_async, allocating by the VMA's policy)
    without mapping it."""
    node = alloc_node(mm.vma_at(start))
    for vpn in range(start, end):
        pte = mm.ptes.get(vpn)
        if pte is not None and pte.kind is Kind.SWAP:
            slot = world.folios[pte.folio]
            if not slot.swapcache:
                # a folio swap readahead may have put there keeps its own node
                known = node if not slot.maybe_cached or slot.node == node else None
                world.folios[pte.folio] = replace(slot, swapcache=True, node=known,
                                                  maybe_cached=False)


def swap_in(world: World, mm: Mm, vma: Vma, vpn: int, write: bool) -> None:
    """do_swap_page on a swap entry: a folio with the slot's content is mapped (no MMU
    notifier: "it was non-present before"), exclusive if the swap PTE said so, or on 6.1/
    6.12 if the page was read outside the swap cache (profile.swapin_skips_swapcache);
    writable at once only then and with VM_WRITE (on 6.1 only for a write fault,
    profile.swapin_read_maps_writable); dirty only for a write fault. The slot
    is freed (folio_put_swap; zram: should_try_to_free_swap). A read-only result of a write
    fault goes on to do_wp_page (mm.write_fault). A slot other swap entries still refer to
    goes through the swap cache (_swap_in_shared)."""
    pte = mm.ptes[vpn]
    slot = world.folios[pte.folio]
    if slot.mapcount > 1 or slot.cache is not None:
        _swap_in_shared(world, mm, vma, vpn)
        return
    if slot.maybe_cached and not slot.exclusive:
        # 6.x: read outside the swap cache ("certainly exclusive") if readahead left it
        # out, else mapped from the swap cache by the swap PTE's (clear) exclusive bit.
        raise Unmodelled("a swap-in of a slot swap readahead may have read into the swap "
                         "cache (6.x)", "exclusive or not depends on the readahead window")
    exclusive = slot.exclusive or (world.profile.swapin_skips_swapcache and not slot.swapcache)
    del world.folios[pte.folio]
    # The folio comes from the swap cache (allocated when willneed read it) or is allocated
    # now by the VMA's policy (swapin_readahead / alloc_swap_folio).
    folio = world.new_folio(slot.content, _swapin_node(slot, vma))
    world.folios[folio] = replace(world.folios[folio], exclusive=exclusive)
    # The swap entry's uffd-wp bit comes along (pte_mkuffd_wp) and keeps the page
    # read-only (userfaultfd_pte_wp); a write then goes on to do_wp_page: SIGBUS.
    uffd_wp = protected(vma, pte)
    soft_dirty = pte.soft_dirty or write   # pte_swp_soft_dirty; a write: pte_mkdirty
    writable = exclusive and vma.prot.writable and \
        (write or world.profile.swapin_read_maps_writable) and \
        (vma.softdirty or soft_dirty) and not uffd_wp   # not pte_needs_soft_dirty_wp
    # 6.1 dirties an exclusive page on a write fault before the uffd-wp pte_wrprotect
    # (maybe_mkwrite(pte_mkdirty())); 6.12 and 7.2 only when they map it writable.
    dirty = write and (writable or (uffd_wp and exclusive and
                                    not world.profile.swapin_read_maps_writable))
    if uffd_wp:
        soft_dirty = pte.soft_dirty or dirty
    mm.ptes[vpn] = Pte(Kind.PRESENT, folio, writable, clean=not dirty,
                       soft_dirty=soft_dirty, uffd_wp=pte.uffd_wp)


def _swap_in_shared(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """do_swap_page of a slot shared after fork (copy_nonpresent_pte: swap count > 1, the
    exclusive bit cleared in every entry), or whose swap-cache folio another process maps.

    The folio is looked up in the swap cache (swap_cache_get_folio) or read into it (7.2
    swapin_sync, 6.x swapin_readahead: __swap_count > 1 rules out 6.x's read outside the
    cache), and every process that swaps the slot in maps that same folio. The swap PTE is
    not exclusive and the swap cache holds a reference (folio_ref_count > 1), so the page is
    mapped read-only and not PageAnonExclusive. The entry's reference is dropped
    (folio_put_swap / swap_free_nr); folio_free_swap (7.2: always on zram; 6.x: for a write
    fault or VM_LOCKED) succeeds only once no swap entry refers to the slot, and even then
    the folio is still mapped elsewhere, so it is never mapped exclusive here. A write
    fault goes on to do_wp_page, which copies (mm._write_protected_anon)."""
    pte = mm.ptes[vpn]
    slot_id = pte.folio
    slot = world.folios[slot_id]
    if world.profile.swapin_skips_swapcache and "locked" in vma.flags and \
            slot.mapcount == 1 and slot.cache is not None and \
            world.folios[slot.cache].mapcount == 0:
        # 6.x should_try_to_free_swap (VM_LOCKED) frees the swap cache, and then the page
        # is mapped exclusive iff folio_ref_count == 1: not while a per-CPU LRU batch still
        # holds the folio, which the model does not follow.
        raise Unmodelled("a swap-in on a VM_LOCKED VMA of the last entry of an unmapped "
                         "swap-cache folio (6.x)",
                         "exclusive or not depends on the LRU batch holding the folio")
    if slot.cache is None:
        folio_id = world.new_id()
        world.folios[folio_id] = Folio(slot.content, 0, False, node=_swapin_node(slot, vma),
                                       swap_slot=slot_id)
        if world.profile.swapin_skips_swapcache and not slot.swapcache:
            _readahead(world, mm, vma, vpn)
    else:
        folio_id = slot.cache
    folio = world.folios[folio_id]
    world.folios[folio_id] = replace(folio, mapcount=folio.mapcount + 1)
    world.folios[slot_id] = replace(slot, cache=folio_id, swapcache=True)
    # do_swap_page: pte_swp_uffd_wp -> pte_mkuffd_wp, from the swap cache as elsewhere
    mm.ptes[vpn] = Pte(Kind.PRESENT, folio_id, False, clean=True, soft_dirty=pte.soft_dirty,
                       uffd_wp=pte.uffd_wp)
    world.unmap_folio(slot_id)   # the entry's swap count; the last one lets the folio go


def _swapin_node(slot: Folio, vma: Vma) -> int | None:
    """The node of the folio a swap-in maps: the swap-cache folio's (willneed or readahead
    allocated it), else a new one by the VMA's policy; None when readahead may or may not
    have allocated it and the two differ."""
    if slot.swapcache:
        return slot.node
    if slot.maybe_cached and slot.node != alloc_node(vma):
        return None
    return alloc_node(vma)


# page_cluster = 3: swap_vma_ra_win's largest window, 8 pages, in the VMA and the PMD
READAHEAD_MAX_WINDOW = 8


def _readahead(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """6.x swapin_readahead -> swap_vma_readahead: read_swap_cache_async of the swap
    entries of the faulting VMA around the address (at most 8 pages, within the PMD),
    allocating by the VMA's policy. The window (swap_vma_ra_win) follows the VMA's
    readahead history, so every slot in reach only may be in the swap cache."""
    pmd = vpn - vpn % 512
    low = max(vma.start, pmd, vpn - READAHEAD_MAX_WINDOW + 1)
    high = min(vma.end, pmd + 512, vpn + READAHEAD_MAX_WINDOW)
    for near in range(low, high):
        pte = mm.ptes.get(near)
        if near == vpn or pte is None or pte.kind is not Kind.SWAP:
            continue
        slot = world.folios[pte.folio]
        if not slot.swapcache and slot.cache is None and not slot.maybe_cached:
            world.folios[pte.folio] = replace(slot, maybe_cached=True, node=alloc_node(vma))


def mark_lazyfree(world: World, mm: Mm, start: int, end: int) -> None:
    """madvise_free_pte_range over [start, end) of one VMA (after its MMU_NOTIFY_CLEAR):
    swap entries are dropped (swap_put_entries_direct, the PTE cleared: the page reads zero
    next time); a present normal folio mapped once is made clean (folio_clear_dirty,
    clear_young_dirty_ptes) and lazyfree (folio_mark_lazyfree). A folio mapped by several
    processes is skipped if its dirty flag is set, else made lazyfree with only this PTE
    cleaned: the model does not know the flag nor the other PTEs' dirty bits, so such a
    folio's later reclaim is left open (Lazyfree.UNKNOWN)."""
    for vpn in range(start, end):
        pte = mm.ptes.get(vpn)
        if pte is None:
            continue
        if pte.kind is Kind.SWAP:
            del mm.ptes[vpn]
            world.unmap_folio(pte.folio)
            continue
        if pte.kind is not Kind.PRESENT:
            continue   # zero page (vm_normal_folio NULL), device-exclusive entries
        folio = world.folios[pte.folio]
        if folio.device is not None:
            continue   # a device-coherent page: "if (!folio || folio_is_zone_device(folio))"
        if folio.swap_slot is not None:
            # folio_test_swapcache: "if (folio_test_swapcache(folio) &&
            # !folio_free_swap(folio)) continue" -- other swap entries hold the slot.
            continue
        state = Lazyfree.CLEAN if folio.mapcount == 1 else Lazyfree.UNKNOWN
        world.folios[pte.folio] = replace(folio, lazyfree=state)
        if folio.mapcount == 1:
            mm.ptes[vpn] = replace(pte, clean=True)


def dirtied(world: World, mm: Mm, vpn: int) -> None:
    """A store through the PTE (or a write fault mapping it dirty): the PTE is dirty, so
    reclaim finds a lazyfree folio redirtied (try_to_unmap_one: pte_dirty ->
    folio_mark_dirty)."""
    pte = mm.ptes[vpn]
    if pte.clean:
        mm.ptes[vpn] = replace(pte, clean=False)
    folio = world.folios.get(pte.folio)
    if folio is not None and folio.lazyfree is Lazyfree.CLEAN:
        world.folios[pte.folio] = replace(folio, lazyfree=Lazyfree.DIRTY)
    if folio is not None and folio.page_cache and not folio.dirty:
        # the dirty PTE makes the page-cache folio dirty when it is unmapped (zap,
        # try_to_unmap_one: folio_mark_dirty); the model marks it at once
        world.folios[pte.folio] = replace(folio, dirty=True)


def lost_track(world: World, folio_id: int) -> None:
    """An op moved or touched a lazyfree folio in a way whose effect on the dirty state the
    model does not follow (device-exclusive GUP, migration, a reuse-or-copy write fault)."""
    folio = world.folios.get(folio_id)
    if folio is not None and folio.lazyfree is not None:
        world.folios[folio_id] = replace(folio, lazyfree=Lazyfree.UNKNOWN)
