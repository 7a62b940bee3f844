"""NUMA placement: move_pages(2) and mbind(2) (mm/migrate.c, mm/mempolicy.c, 7.2).

The guest has memory on nodes 0 and 1 (2 and 3 are names a program may use for nodes that
do not exist). Every folio knows its node (state.Folio.node): the local node 0 unless the
VMA's MPOL_BIND policy (vma.bound_node) said otherwise when it was allocated.

Migration of a page to another node (migrate_pages, MIGRATE_SYNC) keeps everything a later
op can see but the frame: the content, the PTE's bits and PageAnonExclusive travel through
the migration entry (try_to_migrate_one / remove_migration_pte), the PFN is new. What the
device sees: try_to_migrate_one fires MMU_NOTIFY_CLEAR over the page, so every dmirror of
the mm loses the page and, by the dmirror_do_update quirk, the next one.

Both calls take only pages mapped once (move_pages: -EACCES for the others; mbind skips
them), so a migration never reaches another mm.

Migration here is deterministic: lru_cache_disable() drains every CPU's LRU batches (the
mlock batches too) and keeps them off, so every folio a program maps is on an LRU and
folio_isolate_lru() takes it; nothing else isolates pages concurrently (no reclaim, no
proactive compaction, no NUMA balancing in the guest); MIGRATE_SYNC waits for the folio
lock; and no program op leaves an extra reference on a folio (hmm_range_fault takes none,
make_device_exclusive drops its own), so folio_migrate_mapping() finds the expected
reference count. The -EBUSY status of a page that cannot be isolated and the positive
return of a failed migrate_pages() are therefore not in the allowed sets.
"""

from __future__ import annotations

from dataclasses import replace

from harness.prog.ops import Mbind, MovePages

from . import rmap, vma as vmas
from .expect import EACCES, EFAULT, EINVAL, ENODEV, ENOENT, Expect, done, fail
from .mm import split_pmd
from .places import Places
from .refuse import Unmodelled
from .shmem import set_policy
from .state import Kind, Mm, Pte, World

Outcome = tuple[Expect, World]

# The nodes with memory (node_state(N_MEMORY)): the runner's guest has two.
MEMORY_NODES = (0, 1)
# The runner fills the status array with -EINVAL before the call; a failing call that
# writes no status leaves it so.
UNWRITTEN = -EINVAL
# Pages of unknown node (state.Folio.node None) one call may meet before the model refuses:
# each one doubles the states of a move.
MAX_UNKNOWN = 3


# ------------------------------------------------------------------ what a page is

def _lookup(world: World, mm: Mm, vpn: int) -> tuple[int | None, str, int | None]:
    """How move_pages finds the page at vpn: (-errno or None for a folio, why, folio id).

    7.2 and 6.12 (add_folio_for_migration, do_pages_stat_array): vma_lookup, then
    folio_walk_start(FW_ZEROPAGE): no VMA -> -EFAULT; no present PTE (pte_none, swap,
    device-private and device-exclusive entries) -> -ENOENT; the zero page -> -EFAULT. A
    PROT_NONE PTE is pte_present on x86 and is walked like any other.
    6.1 (profile.move_pages_follow_page): follow_page(FOLL_DUMP): pte_none (or no page
    table) is no_page_table() -> -EFAULT for an anonymous VMA (-ENOENT for a shmem VMA,
    which has a fault handler: shmem.py); the rest is as above (its
    pte_protnone check is constant 0 without CONFIG_NUMA_BALANCING, which the guest
    lacks, so a PROT_NONE PTE is followed too)."""
    vma = mm.vma_at(vpn)
    if vma is None:
        return -EFAULT, "vma_lookup finds no VMA -> -EFAULT", None
    pte = mm.ptes.get(vpn)
    old_walk = world.profile.move_pages_follow_page
    if pte is None:
        if old_walk and vma.obj is None:
            return -EFAULT, ("pte_none: follow_page(FOLL_DUMP) -> no_page_table -> -EFAULT "
                             "on an anonymous VMA"), None
        return -ENOENT, "pte_none: folio_walk_start finds nothing -> -ENOENT", None
    if pte.kind not in (Kind.PRESENT, Kind.ZERO):
        return -ENOENT, (f"a {pte.kind.value} entry is not present: no folio -> -ENOENT"), None
    if pte.kind is Kind.ZERO:
        return -EFAULT, "the zero page (is_zero_folio / FOLL_DUMP) -> -EFAULT", None
    if world.folios[pte.folio].device is not None:
        # do_pages_stat_array and __add_folio_for_migration (6.1: add_page_for_migration):
        # "folio_is_zone_device(folio)" -> -ENOENT
        return -ENOENT, "a device-coherent page (folio_is_zone_device) -> -ENOENT", None
    return None, "", pte.folio


def _node_choices(world: World, folio_id: int) -> tuple[int, ...]:
    node = world.folios[folio_id].node
    return MEMORY_NODES if node is None else (node,)


# ------------------------------------------------------------------ move_pages

def move_pages(world: World, op: MovePages, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    if op.node is None:
        return [_query(world, mm, start, end, places)]
    if op.node not in MEMORY_NODES:
        # do_pages_move: node_state(node, N_MEMORY) fails (or node >= MAX_NUMNODES) for the
        # first page -> -ENODEV before any status is written.
        return [(Expect(errno=(ENODEV,), node_status=((UNWRITTEN,),) * (end - start), why={
            "errno": f"do_pages_move: node {op.node} has no memory -> -ENODEV",
            "node_status": "do_pages_move fails before writing any status: the runner's "
                           "-EINVAL stays"}), world)]
    return _move(world, mm_id, mm, start, end, op.node, places)


def _query(world: World, mm: Mm, start: int, end: int, places: Places) -> Outcome:
    """move_pages(nodes == NULL): do_pages_stat -> do_pages_stat_array, one status per page:
    the folio's node (folio_nid) or the lookup's error."""
    statuses, why, unknown = [], [], []
    for vpn in range(start, end):
        err, reason, folio_id = _lookup(world, mm, vpn)
        if err is not None:
            statuses.append((err,))
            why.append(f"{places.name(vpn)}: {reason}")
            unknown.append(None)
            continue
        choices = _node_choices(world, folio_id)
        statuses.append(choices)
        why.append(f"{places.name(vpn)}'s folio is on node "
                   f"{' or '.join(map(str, choices))} (folio_nid)")
        unknown.append(folio_id if len(choices) > 1 else None)
    return (Expect(node_status=tuple(statuses), page_why=tuple(why), node_folios=tuple(unknown),
                   why={"errno": "do_pages_stat: the status array is written",
                        "node_status": "do_pages_stat_array", "cpages": "not a device op",
                        "faults": "not a device op"}), world)


def _move(world: World, mm_id: int, mm: Mm, start: int, end: int, node: int,
          places: Places) -> list[Outcome]:
    """do_pages_move with every page bound for `node`: add_folio_for_migration per page
    (__add_folio_for_migration: the zero page -EFAULT, a device page -ENOENT, already on
    the node: its node, mapped more than once (folio_maybe_mapped_shared) -EACCES, else
    isolated and queued); each queued batch is migrated (do_move_pages_to_node) and gets
    the node as status. Pages of unknown node may be there already or move: one state
    each."""
    worlds = [world]
    statuses, why = [], []
    for vpn in range(start, end):
        err, reason, folio_id = _lookup(world, mm, vpn)
        name = places.name(vpn)
        if err is not None:
            statuses.append(err)
            why.append(f"{name}: {reason}")
            continue
        folio = world.folios[folio_id]
        if folio.node == node:
            statuses.append(node)
            why.append(f"{name} is on node {node} already: nothing to do")
            continue
        if folio.mapcount > 1:
            statuses.append(-EACCES)
            why.append(f"{name} is mapped {folio.mapcount} times: folio_maybe_mapped_shared "
                       "without MPOL_MF_MOVE_ALL -> -EACCES")
            continue
        statuses.append(node)
        why.append(f"{name} is mapped once on node {folio.node}: migrated "
                   "(migrate_pages, MMU_NOTIFY_CLEAR over the page)")
        worlds = _migrate_each(worlds, mm_id, vpn, node, folio.node is None)
    return [(Expect(node_status=tuple((s,) for s in statuses), page_why=tuple(why), why={
        "errno": "do_pages_move: every page's outcome is in its status; no migration fails",
        "node_status": "do_pages_move / add_folio_for_migration",
        "cpages": "not a device op", "faults": "not a device op"}), w) for w in worlds]


def _migrate_each(worlds: list[World], mm_id: int, vpn: int, node: int,
                  unknown: bool) -> list[World]:
    """Migrate the page at vpn in every state; a page of unknown node may also be on the
    node already (no migration)."""
    if not unknown:
        for w in worlds:
            migrate_page(w, mm_id, vpn, node)
        return worlds
    if len(worlds) >= 1 << MAX_UNKNOWN:
        raise Unmodelled("move_pages of many pages whose node is not known")
    result = []
    for w in worlds:
        stayed = w.clone()
        folio_id = stayed.mms[mm_id].ptes[vpn].folio
        stayed.folios[folio_id] = replace(stayed.folios[folio_id], node=node)
        migrate_page(w, mm_id, vpn, node)
        result += [w, stayed]
    return result


def migrate_page(world: World, mm_id: int, vpn: int, node: int) -> None:
    """migrate_pages of the folio mapped (once) at vpn to `node`: try_to_migrate_one fires
    MMU_NOTIFY_CLEAR over the page (the mirror loses it and, by the quirk, the next page),
    remove_migration_pte maps the new folio with the same PTE bits and PageAnonExclusive.
    The model keeps the folio's identity; its PFN is forgotten."""
    mm = world.mms[mm_id]
    pte = mm.ptes[vpn]
    folio_id = pte.folio
    if world.profile.migration_dirty_sets_soft_dirty and migration_marks_soft_dirty(pte):
        mm.ptes[vpn] = replace(pte, soft_dirty=True)
    # try_to_migrate's rmap walk may also CLEAR other VMAs over the page (after fork: a
    # process that copied it has its VMA in the anon_vma, maybe before this one): rmap.py.
    rmap.unmap_walk(world, mm_id, vpn, [(mm_id, vpn)])
    world.folios[folio_id] = replace(world.folios[folio_id], node=node)
    world.pfns.pop(("pfn", folio_id), None)


def migration_marks_soft_dirty(pte: Pte) -> bool:
    """6.1 remove_migration_pte: pte_mksoft_dirty from the entry, then pte_mkdirty() for a
    dirty page (try_to_migrate_one made the migration entry dirty and marked the folio
    dirty from pte_dirty), which on x86 sets the soft-dirty bit as well
    (profile.migration_dirty_sets_soft_dirty). A PTE the model knows to be clean (a
    swap-in read, madvise free, a page back from device memory) keeps its bit."""
    return pte.kind is Kind.PRESENT and not pte.soft_dirty and not pte.clean


# ------------------------------------------------------------------ mbind

def mbind(world: World, op: Mbind, places: Places) -> list[Outcome]:
    """mbind(MPOL_BIND, {node}, MPOL_MF_MOVE) -> do_mbind: mpol_set_nodemask (-EINVAL for a
    node without memory: the mask left is empty), queue_pages_range (-EFAULT for a hole
    anywhere in the range, MPOL_MF_DISCONTIG_OK not being set; the pages it isolated go
    back untouched), mbind_range per VMA (vma_modify_policy: merge or split, like
    mprotect, with the split notifier), then migrate_pages of the queued folios. Errors
    in isolating or migrating are not reported without MPOL_MF_STRICT."""
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    if op.node not in MEMORY_NODES:
        return [(fail(EINVAL, f"mpol_set_nodemask: node {op.node} has no memory, the "
                              "nodemask is empty -> mpol_new_nodemask -EINVAL"), world)]
    covered = sum(min(end, v.end) - max(start, v.start) for v in vmas.overlaps(mm, start, end))
    if covered < end - start:
        return [(fail(EFAULT, "queue_pages_test_walk: a hole in the range without "
                              "MPOL_MF_DISCONTIG_OK -> -EFAULT (nothing changes)"), world)]
    queued = [vpn for vpn in range(start, end) if _queued(world, mm, vpn, op.node)]
    if any(world.folios[mm.ptes[vpn].folio].node is None for vpn in queued):
        raise Unmodelled("mbind over a page whose node is not known")

    def update(vma):
        return {"flags": vmas.with_policy(vma.flags, op.node)}

    # vma_modify_policy: the merged VMA keeps its own vm_flags (no vm_flags_reset)
    _, changed, splits = vmas.modify(mm, start, end, update, world.profile,
                                     stop_at_hole=True, resets_flags=False)
    for vma, vpn in splits:
        split_pmd(world, mm_id, vma, vpn)
    for piece_start, _ in changed:
        # (a VMA whose policy already matched is skipped by mbind_range: mpol_equal)
        vma = mm.vma_at(piece_start)
        if vma.obj is not None:
            set_policy(world, vma, op.node)
    for vpn in queued:
        migrate_page(world, mm_id, vpn, op.node)
    return [(done("do_mbind: the whole range is mapped; the policy is set and the pages "
                  "that can move have moved (failures are reported only with "
                  "MPOL_MF_STRICT)"), world)]


def _queued(world: World, mm: Mm, vpn: int, node: int) -> bool:
    """queue_folios_pte_range: present PTEs of normal folios (not the zero page nor device
    pages: vm_normal_folio, folio_is_zone_device) not on the node (MPOL_MF_INVERT), that
    migrate_folio_add takes: only folios not mapped shared (folio_maybe_mapped_shared)."""
    pte = mm.ptes.get(vpn)
    if pte is None or pte.kind is not Kind.PRESENT:
        return False
    folio = world.folios[pte.folio]
    return folio.node != node and folio.mapcount == 1 and folio.device is None
