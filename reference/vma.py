"""VMA bookkeeping: mmap, munmap, mprotect, fork and anon_vma assignment.

Why the model cares about VMA boundaries at all: fork copies page tables (and fires the MMU
notifier over the parent's range) only for VMAs that have an anon_vma (vma_needs_copy,
copy_page_range in mm/memory.c), and which pages share a VMA with an anon_vma depends on the
merges done by mmap and mprotect (mm/vma.c) and on the anon_vma sharing done by
anon_vma_prepare (find_mergeable_anon_vma). Everything here follows those functions.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import replace

from harness.prog import Prot

from .profile import Profile
from .state import Mm, Vma, World

# A VMA boundary moving to a vpn inside a VMA (given as it was before): a __split_vma, or a
# merge that shrinks the VMA (commit_merge with __adjust_middle_start/__adjust_next_start).
# Each is a vma_adjust_trans_huge() call that may fire the MMU notifier (mm.split_pmd).
Split = tuple[Vma, int]


# The node every program process allocates on by default: the runner pins the processes to
# CPU 0, which is on node 0, and the default policy allocates on the local node
# (policy_node -> numa_node_id()).
LOCAL_NODE = 0
_BIND = "bind"   # Vma.flags holds "bind<N>" for an mbind(MPOL_BIND, {N}) policy


def bound_node(vma: Vma) -> int | None:
    """The node of the VMA's MPOL_BIND policy (mbind), or None for the default policy."""
    for flag in vma.flags:
        if flag.startswith(_BIND):
            return int(flag[len(_BIND):])
    return None


def with_policy(flags: frozenset, node: int) -> frozenset:
    """The VMA's flags with its policy replaced by MPOL_BIND to `node`. The policy sits
    with the flags because it decides merges the same way: is_mergeable_vma and
    anon_vma_compatible want mpol_equal(), and fork and mremap copy it (vma_dup_policy)."""
    return frozenset(f for f in flags if not f.startswith(_BIND)) | {f"{_BIND}{node}"}


def alloc_node(vma: Vma) -> int:
    """Where a page allocated for the VMA lands (vma_alloc_folio, alloc_page_vma with the
    VMA's policy): its MPOL_BIND node, else the local node. The guest has ample memory on
    both nodes, so no allocation falls back to another node."""
    node = bound_node(vma)
    return LOCAL_NODE if node is None else node


def overlaps(mm: Mm, start: int, end: int) -> list[Vma]:
    return [v for v in mm.vmas if v.start < end and start < v.end]


def _index(mm: Mm, vpn: int) -> int | None:
    for i, vma in enumerate(mm.vmas):
        if vma.start <= vpn < vma.end:
            return i
    return None


def _same_flags(vma: Vma, other: Vma) -> bool:
    # is_mergeable_vma: all flags but VMA_IGNORE_MERGE_FLAGS (soft-dirty, maybe-guard) must
    # match; for our anonymous private VMAs: the protection, VM_ACCOUNT and Vma.flags.
    # can_vma_merge_before/after also want vm_pgoff to continue across the boundary.
    # is_mergeable_vma also wants the same vm_file (shmem.py: the object) and VM_SHARED.
    return vma.prot is other.prot and vma.account == other.account and \
        vma.flags == other.flags and vma.shift == other.shift and \
        vma.obj == other.obj and vma.shared == other.shared


def _anon_mergeable(target: Vma, source_anon: int | None, source: Vma | None,
                    profile: Profile) -> bool:
    """is_mergeable_anon_vma (mm/vma.c)."""
    if target.anon is None and source_anon is not None:
        if not profile.merge_into_vma_without_anon:
            return False
        return not (source is not None and source.fork_child)   # case 1: dup from source
    if target.anon is not None and source_anon is None:
        return not target.fork_child                             # case 2: use target's
    return target.anon == source_anon                            # case 3: already shared


def _merged_anon(first: Vma, *others: Vma) -> tuple[int | None, bool]:
    """The anon_vma a merge result carries: the target's, else the one dup_anon_vma copies."""
    for vma in (first, *others):
        if vma.anon is not None:
            return vma.anon, vma.fork_child
    return None, False


# ------------------------------------------------------------------ mmap

def map_new(mm: Mm, start: int, end: int, profile: Profile) -> None:
    """mmap(MAP_PRIVATE|MAP_ANONYMOUS, PROT_READ|PROT_WRITE) of a free range.

    The new VMA is accountable (VM_ACCOUNT) and has no anon_vma; __mmap_region tries
    vma_merge_new_range with the neighbours first.
    """
    merged = merge_new(mm, Vma(start, end, Prot.RW), None, profile, mmap=True)
    # __mmap_complete: "New (or expanded) vma always get soft dirty status."
    i = mm.vmas.index(merged)
    mm.vmas[i] = replace(merged, softdirty=True)


def _sticky(profile: Profile, survivor: Vma, *others: Vma) -> bool:
    """VM_SOFTDIRTY of a merge result. 7.2: VMA_STICKY_FLAGS survive a merge if any part
    had them (vma_expand, commit_merge). 6.1/6.12 (profile.vma_softdirty_sticky off):
    is_mergeable_vma ignores VM_SOFTDIRTY and the merge keeps the flags of the VMA that
    survives (`survivor`: prev if it merges, else next), whatever the others had."""
    if profile.vma_softdirty_sticky:
        return any(part.softdirty for part in (survivor, *others))
    return survivor.softdirty


def merge_new(mm: Mm, fresh: Vma, source: Vma | None, profile: Profile,
              not_with_source: bool = False, mmap: bool = False) -> Vma:
    """vma_merge_new_range for a VMA `fresh` over a free range, or a new VMA: mmap (no
    source), copy_vma for mremap (`source` is the VMA copied from, whose anon_vma the copy
    carries), vma_merge_extend (the VMA itself grows). Returns the VMA now covering it.
    `not_with_source`: the source is no merge candidate (copy_vma of an unfaulted VMA that
    stays, "if (!faulted_in_anon_vma && keep_source)"). `mmap`: the caller is mmap_region,
    which 6.1 merges its own way (profile.mmap_checks_prev_against_next); 6.1's copy_vma
    and mremap's expansion call vma_merge(), whose rules are the ones below."""
    vmas = mm.vmas
    start, end = fresh.start, fresh.end
    i = next((k for k, v in enumerate(vmas) if v.start >= end), len(vmas))
    prev = vmas[i - 1] if i > 0 and vmas[i - 1].end == start else None
    nxt = vmas[i] if i < len(vmas) and vmas[i].start == end else None
    if not_with_source:
        prev = None if prev == source else prev
        nxt = None if nxt == source else nxt
    right = nxt is not None and _same_flags(nxt, fresh) and \
        _anon_mergeable(nxt, fresh.anon, source, profile)
    if mmap and profile.mmap_checks_prev_against_next:
        # 6.1 mmap_region: prev must be compatible with the anon_vma of the next VMA it
        # would absorb; no separate prev/next compatibility check follows.
        left = prev is not None and _same_flags(prev, fresh) and \
            _anon_mergeable(prev, nxt.anon if right else fresh.anon,
                            nxt if right else source, profile)
    else:
        left = prev is not None and _same_flags(prev, fresh) and \
            _anon_mergeable(prev, fresh.anon, source, profile)
        right = right and \
            (not left or prev.anon is None or nxt.anon is None or prev.anon == nxt.anon)
    if left and right:
        anon, child = _merged_anon(prev, nxt, fresh)
        merged = replace(prev, end=nxt.end, anon=anon, fork_child=child,
                         softdirty=_sticky(profile, prev, nxt, fresh))
        vmas[i - 1:i + 1] = [merged]
    elif left:
        anon, child = _merged_anon(prev, fresh)
        merged = vmas[i - 1] = replace(prev, end=end, anon=anon, fork_child=child,
                                       softdirty=_sticky(profile, prev, fresh))
    elif right:
        anon, child = _merged_anon(nxt, fresh)
        merged = vmas[i] = replace(nxt, start=start, shift=fresh.shift, anon=anon,
                                   fork_child=child, softdirty=_sticky(profile, nxt, fresh))
    else:
        merged = fresh
        vmas.insert(i, fresh)
    return merged


def insert_new(mm: Mm, fresh: Vma) -> Vma:
    """A new VMA over a free range, merged with nothing (vma_link)."""
    i = next((k for k, v in enumerate(mm.vmas) if v.start >= fresh.end), len(mm.vmas))
    mm.vmas.insert(i, fresh)
    return fresh


def split(mm: Mm, vpn: int) -> Split | None:
    """__split_vma at `vpn` if it falls inside a VMA (not at its start): the boundary move
    vma_adjust_trans_huge() looks at."""
    i = _index(mm, vpn)
    if i is None or mm.vmas[i].start == vpn:
        return None
    vma = mm.vmas[i]
    mm.vmas[i:i + 1] = [replace(vma, end=vpn), replace(vma, start=vpn)]
    return vma, vpn


# ------------------------------------------------------------------ munmap

def unmap(mm: Mm, start: int, end: int) -> list[Split]:
    """Split VMAs at the range's edges and drop what lies inside; munmap never merges.

    Returns the boundary moves (vms_gather_munmap_vmas: __split_vma at `start` of the first
    VMA, then at `end` of the last one as it is after the first split), each with the VMA as
    it was when vma_adjust_trans_huge() looked at it.
    """
    kept, splits = [], []
    for v in mm.vmas:
        if v.end <= start or v.start >= end:
            kept.append(v)
            continue
        if v.start < start:
            splits.append((v, start))
            kept.append(replace(v, end=start))
        if v.end > end:
            splits.append((replace(v, start=max(v.start, start)), end))
            kept.append(replace(v, start=end))
    mm.vmas[:] = kept
    return splits


# ------------------------------------------------------------------ mprotect, flags

Update = Callable[[Vma], dict]   # the fields a VMA gets (prot, account, flags)


def mprotect(mm: Mm, start: int, end: int, prot: Prot,
             profile: Profile) -> tuple[int, list[tuple[int, int]], list[Split]]:
    """do_mprotect_pkey: (errno, the ranges whose protection changed, the boundary moves).

    The VMAs are changed one after another from `start`; the first hole stops the loop with
    -ENOMEM after the earlier pieces were already changed, and a range that does not begin
    inside a VMA fails before changing anything. A piece whose flags already match is left
    alone (mprotect_fixup: vma_flags_same_pair), so it fires no MMU notifier either.
    """
    def update(vma: Vma) -> dict:
        if vma.shared:
            # mprotect_fixup never charges a VM_SHARED mapping (shmem accounts the object).
            account = False
        elif prot.writable:
            # A private mapping turning writable is charged and gets VM_ACCOUNT.
            account = True
        elif vma.obj is not None or not profile.mprotect_unaccounts_read_only:
            # Only an anonymous VMA (vma_is_anonymous) without anon_vma drops VM_ACCOUNT,
            # and 6.1's mprotect_fixup never does.
            account = vma.account
        else:
            # "...except in the anonymous case where no anon_vma has yet to be assigned":
            # VM_ACCOUNT is dropped only while the VMA has no anon_vma.
            account = vma.account and vma.anon is not None
        return {"prot": prot, "account": account}

    return modify(mm, start, end, update, profile, stop_at_hole=True)


def modify(mm: Mm, start: int, end: int, update: Update, profile: Profile,
           stop_at_hole: bool,
           resets_flags: bool = True) -> tuple[int, list[tuple[int, int]], list[Split]]:
    """Give every VMA piece of [start, end) the fields `update` says: (errno, the pieces
    that changed, the boundary moves). An unchanged piece is left alone (vma_flags_same_*).
    mprotect and mlock (apply_vma_lock_flags) fail at a range that does not begin inside a
    VMA before changing anything and stop at the first hole with -ENOMEM
    (`stop_at_hole`); madvise (madvise_walk_vmas) carries on past holes and returns -ENOMEM
    at the end. `resets_flags`: the caller sets the changed VMA's new vm_flags on whatever
    VMA the merge left (mprotect_fixup, madvise_update_vma, mlock_fixup: vm_flags_reset);
    mbind's vma_modify_policy does not."""
    first = next((v for v in mm.vmas if v.end > start), None)
    if stop_at_hole and (first is None or first.start >= end or first.start > start):
        return errno.ENOMEM, [], []
    changed: list[tuple[int, int]] = []
    splits: list[Split] = []
    err = 0
    addr = start
    while addr < end:
        i = _index(mm, addr)
        if i is None:
            err = errno.ENOMEM
            if stop_at_hole:
                return err, changed, splits
            nxt = next((v for v in mm.vmas if v.start > addr), None)
            if nxt is None or nxt.start >= end:
                break
            addr = nxt.start
            continue
        vma = mm.vmas[i]
        piece_end = min(end, vma.end)
        fields = update(vma)
        if any(getattr(vma, name) != value for name, value in fields.items()):
            splits += _fixup(mm, i, addr, piece_end, fields, profile, resets_flags)
            changed.append((addr, piece_end))
        addr = piece_end
    return err, changed, splits


def _fixup(mm: Mm, i: int, start: int, end: int, fields: dict, profile: Profile,
           resets_flags: bool = True) -> list[Split]:
    """mprotect_fixup / vma_modify_flags for [start, end) inside mm.vmas[i]: vma_modify
    tries a merge first, else splits at `start` (the whole VMA) and then at `end` (the VMA
    left of the first split), like munmap."""
    middle = mm.vmas[i]
    target = replace(middle, start=start, end=end, **fields)
    moved = _merge_existing(mm, i, start, end, target, profile, resets_flags)
    if moved is not None:
        return moved
    pieces, splits = [], []
    if middle.start < start:
        pieces.append(replace(middle, end=start))
        splits.append((middle, start))
    pieces.append(target)
    if end < middle.end:
        pieces.append(replace(middle, start=end))
        splits.append((replace(middle, start=start), end))
    mm.vmas[i:i + 1] = pieces
    return splits


def _merge_existing(mm: Mm, i: int, start: int, end: int, target: Vma,
                    profile: Profile, resets_flags: bool = True) -> list[Split] | None:
    """vma_merge_existing_range: merge the changed piece into an identical neighbour.
    None if no merge; else the boundary moves inside the old middle VMA: commit_merge calls
    vma_adjust_trans_huge(vma, start, end, next) so that split_huge_pmd_if_needed() looks at
    the old middle at `end` when prev grows over part of it (__adjust_middle_start; 6.x:
    adjust_next > 0) and at `start` when next grows over part of it (__adjust_next_start:
    vma is middle, its new end is `start`). Its other calls look at addresses the VMA they
    are given does not cover around them (its own unaligned start, or past its end), so they
    never fire; a merge that removes middle moves no boundary inside a VMA."""
    vmas = mm.vmas
    middle = vmas[i]
    left_side, right_side = start == middle.start, end == middle.end
    prev = vmas[i - 1] if i > 0 and vmas[i - 1].end == middle.start else None
    nxt = vmas[i + 1] if i + 1 < len(vmas) and vmas[i + 1].start == middle.end else None
    left = left_side and prev is not None and _same_flags(prev, target) and \
        _anon_mergeable(prev, middle.anon, middle, profile)
    right = right_side and nxt is not None and _same_flags(nxt, target) and \
        _anon_mergeable(nxt, middle.anon, middle, profile) and \
        (not left or prev.anon is None or nxt.anon is None or prev.anon == nxt.anon)

    def softdirty(survivor: Vma, *others: Vma) -> bool:
        # 6.x: vm_flags_reset(vma, newflags) gives the merged VMA the changed VMA's flags
        if resets_flags and not profile.vma_softdirty_sticky:
            return target.softdirty
        return _sticky(profile, survivor, *others)

    if left and right:
        anon, child = _merged_anon(prev, nxt, middle)
        vmas[i - 1:i + 2] = [replace(prev, end=nxt.end, anon=anon, fork_child=child,
                                     softdirty=softdirty(prev, nxt, target))]
        return []
    if left:
        anon, child = _merged_anon(prev, middle)
        grown = replace(prev, end=end, anon=anon, fork_child=child,
                        softdirty=softdirty(prev, target))
        vmas[i - 1:i + 1] = [grown] if right_side else [grown, replace(middle, start=end)]
        return [] if right_side else [(middle, end)]
    if right:
        anon, child = _merged_anon(nxt, middle)
        grown = replace(nxt, start=start, anon=anon, fork_child=child,
                        softdirty=softdirty(nxt, target))
        vmas[i:i + 2] = [grown] if left_side else [replace(middle, end=start), grown]
        return [] if left_side else [(middle, start)]
    return None


# ------------------------------------------------------------------ anon_vma

def anon_prepare(world: World, mm: Mm, vpn: int) -> None:
    """anon_vma_prepare for the VMA holding `vpn`: reuse a compatible neighbour's anon_vma
    (find_mergeable_anon_vma: next first, then prev; same flags but for the access bits,
    adjacent, and a singular anon_vma_chain), else allocate a new one."""
    i = _index(mm, vpn)
    vma = mm.vmas[i]
    if vma.anon is not None:
        return
    vmas = mm.vmas
    anon = None
    for j in (i + 1, i - 1):
        if not 0 <= j < len(vmas):
            continue
        other = vmas[j]
        adjacent = other.start == vma.end if j > i else other.end == vma.start
        # anon_vma_compatible: the flags but the access bits must match
        if adjacent and other.account == vma.account and other.flags == vma.flags \
                and other.shift == vma.shift and other.obj == vma.obj \
                and other.anon is not None \
                and not other.fork_child:
            anon = other.anon
            break
    vmas[i] = replace(vma, anon=anon if anon is not None else world.new_id(), fork_child=False)


def fork_vmas(world: World, parent: Mm) -> list[Vma]:
    """dup_mmap: the child's VMAs. A VM_DONTCOPY VMA is not copied at all; a VM_WIPEONFORK
    one is copied without anon_vma ("a clean slate in the child"); anon_vma_fork gives
    every other one with a parent anon_vma a new anon_vma whose chain also links the
    parent's (so the child's VMA is a fork child). The child's VMAs lose VM_LOCKED
    (vm_flags_clear(tmp, VM_LOCKED_MASK)) and their userfaultfd registration
    (dup_userfaultfd: the runner's contexts lack UFFD_FEATURE_EVENT_FORK, so
    userfaultfd_reset_ctx clears VM_UFFD_WP)."""
    child = []
    for vma in parent.vmas:
        if "dontcopy" in vma.flags:
            continue
        if "wipeonfork" in vma.flags:
            vma = replace(vma, anon=None, fork_child=False)
        elif vma.anon is not None:
            vma = replace(vma, anon=world.new_id(), fork_child=True)
        if "uffd_wp" in vma.flags and vma.shared:
            # userfaultfd_reset_ctx -> userfaultfd_set_vm_flags -> vma_set_page_prot
            vma = replace(vma, writenotify=not vma.softdirty)
        child.append(replace(vma, flags=vma.flags - {"locked", "uffd_wp"}))
    return child
