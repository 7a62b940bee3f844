"""mremap(2) of private anonymous memory, from 7.2's mm/mremap.c.

The runner asks for two kinds: a resize in place (flags 0) and a move to a fixed range
(MREMAP_MAYMOVE | MREMAP_FIXED, maybe with MREMAP_DONTUNMAP). A move carries the PTEs as
they are (move_ptes: present pages, the zero page, swap, device-private and
device-exclusive entries alike), so every folio keeps its content, PFN and mapcount at the
new address; the mirror of the old range is invalidated (move_page_tables fires
MMU_NOTIFY_UNMAP over it), and the munmaps around it (the destination, the shrunk tail, the
source) are ordinary munmaps with their split notifiers.

6.1 and 6.12 take the same steps in another order and move one VMA only
(profile.mremap_moves_one_vma, `_mremap_to_one_vma`); their copy_vma merges by the same
rules as mmap's (6.1: vma_merge, with profile.copy_vma_no_merge_beside_kept_source).
"""

from __future__ import annotations

from dataclasses import replace

from . import ksm, mm as cpu, remap_thp, shmem, vma as vmas
from .expect import EFAULT, EINVAL, ENOMEM, Expect, done, fail
from .places import Places
from .state import Mm, Vma, World

Outcome = tuple[Expect, World]


def mremap(world: World, op, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    old_start, old_end = places.vpns(op.range)
    old_len, new_len = old_end - old_start, op.new_npages
    if op.to is None:
        return [(_resize_in_place(world, mm_id, mm, old_start, old_len, new_len, places),
                 world)]
    new_start, _ = places.vpns(op.to)
    if world.profile.mremap_moves_one_vma:
        err, why = _mremap_to_one_vma(world, mm_id, mm, old_start, old_len, new_start,
                                      new_len, op.dontunmap, places)
        if err:
            return [(fail(err, why), world)]
        return [(done("mremap: the range moved"), world)]
    # check_mremap_params
    if op.dontunmap and old_len != new_len:
        return [(fail(EINVAL, "check_mremap_params: MREMAP_DONTUNMAP does not allow "
                              "resizing -> -EINVAL"), world)]
    if old_start < new_start + new_len and new_start < old_end:
        return [(fail(EINVAL, "check_mremap_params: the target overlaps the source "
                              "-> -EINVAL"), world)]
    if old_len == new_len:
        err, why = _remap_move(world, mm_id, mm, old_start, old_len, new_start,
                               op.dontunmap, places)
    else:
        err, why = _remap_resize_to(world, mm_id, mm, old_start, old_len, new_start,
                                    new_len, places)
    if err:
        return [(fail(err, why), world)]
    return [(done("mremap: the range moved"), world)]


# ------------------------------------------------------------------ in place

def _resize_in_place(world: World, mm_id: int, mm: Mm, start: int, old_len: int,
                     new_len: int, places: Places) -> Expect:
    """do_mremap without MREMAP_MAYMOVE -> mremap_at."""
    vma = mm.vma_at(start)
    if vma is None:
        return fail(EFAULT, f"check_prep_vma: no VMA at {places.name(start)} -> -EFAULT")
    if new_len == old_len:
        return done("mremap_at: MREMAP_NO_RESIZE returns the address")
    if new_len < old_len:
        # shrink_vma: do_vmi_munmap of the tail, whatever lies there.
        cpu.munmap(world, mm_id, start + new_len, start + old_len)
        return done("mremap_at: shrink_vma unmaps the tail")
    if old_len > vma.end - start:
        return fail(EFAULT, f"check_prep_vma: the range runs past the end of "
                            f"{places.name(start)}'s VMA -> -EFAULT")
    delta = new_len - old_len
    if vma.end - start != old_len or vmas.overlaps(mm, vma.end, vma.end + delta):
        # vrm_can_expand_in_place fails and there is no MREMAP_MAYMOVE.
        return fail(ENOMEM, "expand_vma: the VMA cannot grow in place (the range does not "
                            "end the VMA, or another VMA lies behind it) and may not move "
                            "-> -ENOMEM")
    # expand_vma_in_place -> vma_merge_extend: the VMA grows (vma_merge_new_range with the
    # VMA as prev), merging with the next VMA if that one is compatible; no notifier.
    vmas.merge_new(mm, replace(vma, start=vma.end, end=vma.end + delta), vma, world.profile)
    if "locked" in vma.flags:
        _populate(world, mm_id, mm, start + old_len, start + new_len)
    return done("expand_vma_in_place: the VMA grows over the free range behind it")


def _populate(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """do_mremap: "VMA mlock'd + was expanded, so populated expanded region":
    mm_populate -> __mm_populate(ignore_errors): write faults on a private writable VMA,
    read faults otherwise, PROT_NONE VMAs skipped (their -EFAULT ignored)."""
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        if vma is not None and vma.prot.readable:
            cpu.populate_page(world, mm_id, mm, vma, vpn, shmem.populates_with_write(vma))


# ------------------------------------------------------------------ moves

def _mremap_to_one_vma(world: World, mm_id: int, mm: Mm, start: int, old_len: int,
                       new_start: int, new_len: int, dontunmap: bool,
                       places: Places) -> tuple[int, str]:
    """6.1/6.12 SYSCALL_DEFINE5(mremap) with MREMAP_FIXED, then mremap_to: the checks come
    in another order than 7.2's, and the source must lie in one VMA whatever the sizes."""
    if dontunmap and old_len != new_len:
        return EINVAL, "mremap: MREMAP_DONTUNMAP does not allow resizing -> -EINVAL"
    if mm.vma_at(start) is None:
        return EFAULT, f"mremap: vma_lookup finds no VMA at {places.name(start)} -> -EFAULT"
    if start < new_start + new_len and new_start < start + old_len:
        return EINVAL, "mremap_to: the target overlaps the source -> -EINVAL"
    # do_munmap of the target, and of the tail for a shrink, before vma_to_resize looks
    cpu.munmap(world, mm_id, new_start, new_start + new_len)
    if new_len < old_len:
        cpu.munmap(world, mm_id, start + new_len, start + old_len)
        old_len = new_len
    vma = mm.vma_at(start)
    if old_len > vma.end - start:
        return EFAULT, (f"vma_to_resize: the range runs past the end of {places.name(start)}'s "
                        "VMA (\"We can't remap across vm area boundaries\"), after the target "
                        "was unmapped -> -EFAULT")
    locked = "locked" in vma.flags
    _move_vma(world, mm_id, mm, start, old_len, new_start, new_len, dontunmap)
    if locked and new_len > old_len:
        _populate(world, mm_id, mm, new_start + old_len, new_start + new_len)
    return 0, ""


def _remap_move(world: World, mm_id: int, mm: Mm, start: int, length: int, new_start: int,
                dontunmap: bool, places: Places) -> tuple[int, str]:
    """remap_move (MREMAP_FIXED, same size): every VMA in the range moves on its own, the
    gaps between them kept (7.2); a gap at the start is -EFAULT."""
    end = start + length
    pieces = vmas.overlaps(mm, start, end)
    if not pieces or pieces[0].start > start:
        return EFAULT, (f"remap_move: no VMA at {places.name(start)} (no gap permitted at the "
                        "start of the range) -> -EFAULT")
    target, last_end = new_start, None
    for vma in pieces:
        piece_start, piece_end = max(vma.start, start), min(end, vma.end)
        offset = 0 if last_end is None else vma.start - last_end
        last_end = vma.end
        dest = target + offset
        _mremap_to(world, mm_id, mm, piece_start, piece_end - piece_start, dest,
                   piece_end - piece_start, dontunmap)
        target = dest + piece_end - piece_start
    return 0, ""


def _remap_resize_to(world: World, mm_id: int, mm: Mm, start: int, old_len: int,
                     new_start: int, new_len: int, places: Places) -> tuple[int, str]:
    """do_mremap with MREMAP_FIXED and a new size: one VMA (vma_lookup), check_prep_vma,
    mremap_to."""
    vma = mm.vma_at(start)
    if vma is None:
        return EFAULT, f"check_prep_vma: no VMA at {places.name(start)} -> -EFAULT"
    # "We permit crossing of boundaries for the range being unmapped due to a shrink."
    if min(old_len, new_len) > vma.end - start:
        return EFAULT, (f"check_prep_vma: the range runs past the end of "
                        f"{places.name(start)}'s VMA -> -EFAULT")
    locked = "locked" in vma.flags
    _mremap_to(world, mm_id, mm, start, old_len, new_start, new_len, False)
    if locked and new_len > old_len:
        _populate(world, mm_id, mm, new_start + old_len, new_start + new_len)
    return 0, ""


def _mremap_to(world: World, mm_id: int, mm: Mm, start: int, old_len: int, new_start: int,
               new_len: int, dontunmap: bool) -> None:
    """mremap_to: do_munmap of the destination (MREMAP_FIXED), shrink_vma of the source's
    tail for a shrink, then move_vma."""
    cpu.munmap(world, mm_id, new_start, new_start + new_len)
    if new_len < old_len:
        cpu.munmap(world, mm_id, start + new_len, start + old_len)
        old_len = new_len
    _move_vma(world, mm_id, mm, start, old_len, new_start, new_len, dontunmap)


def _move_vma(world: World, mm_id: int, mm: Mm, start: int, old_len: int, new_start: int,
              new_len: int, dontunmap: bool) -> None:
    """move_vma: prep_move_vma (its ksm_madvise(MADV_UNMERGEABLE) works on a copy of the
    flags; MREMAP_DONTUNMAP of a VM_LOCKED VMA first splits the range off), then
    copy_vma_and_data (copy_vma, move_page_tables), then dontunmap_complete or
    unmap_source_vma."""
    # prep_move_vma: ksm_madvise(MADV_UNMERGEABLE) over the old range breaks its KSM pages
    ksm.unmerge(world, mm_id, mm, start, start + old_len)
    vma = mm.vma_at(start)
    if dontunmap and "locked" in vma.flags:
        for edge in (start, start + old_len):   # needs_pre_split
            moved = vmas.split(mm, edge)
            if moved is not None:
                cpu.split_pmd(world, mm_id, *moved)
        vma = mm.vma_at(start)
    copy = _copy_vma(world, mm, vma, start, new_start, new_len, dontunmap)
    _move_page_tables(world, mm_id, mm, start, old_len, new_start)
    if dontunmap:
        _dontunmap_complete(mm, start, old_len)
    else:
        # unmap_source_vma: do_vmi_munmap of the old range (its VM_ACCOUNT juggling leaves
        # the remaining pieces as they were).
        cpu.munmap(world, mm_id, start, start + old_len)
    del copy


def _copy_vma(world: World, mm: Mm, vma: Vma, start: int, new_start: int, new_len: int,
              keep_source: bool) -> Vma:
    """copy_vma (mm/vma.c): the new VMA has the source's flags and anon_vma and keeps its
    vm_pgoff, except that a VMA never faulted (no anon_vma) gets the pgoff of its new
    address; vma_merge_copied_range merges it with compatible neighbours (never with the
    source itself when it stays, for an unfaulted source). Only an anonymous VMA
    (vma_is_anonymous) counts as unfaulted: a shmem VMA keeps its object's vm_pgoff."""
    faulted = vma.anon is not None or vma.obj is not None
    shift = vma.shift + start - new_start if faulted else 0
    fresh = replace(vma, start=new_start, end=new_start + new_len, shift=shift)
    if world.profile.copy_vma_no_merge_beside_kept_source and not faulted and keep_source \
            and (new_start == vma.end or vma.start == new_start + new_len):
        # 6.1: "simply do not attempt to merge in that case"
        return vmas.insert_new(mm, fresh)
    # "if (!faulted_in_anon_vma && keep_source)": prev/next == vma are no merge candidates
    return vmas.merge_new(mm, fresh, vma, world.profile,
                          not_with_source=not faulted and keep_source)


def _move_page_tables(world: World, mm_id: int, mm: Mm, start: int, length: int,
                      new_start: int) -> None:
    """move_page_tables: MMU_NOTIFY_UNMAP over the old range (try_realign_addr may start it
    at the PMD boundary below, where no VMA and so no mirrored page lies), the PMD level
    (remap_thp.move_page_tables: PMD mappings and PTE tables), then every PTE moves as it
    is (move_ptes) or with its table (move_normal_pmd)."""
    cpu.invalidate(world, mm_id, start, start + length)
    keep = remap_thp.move_page_tables(world, mm_id, mm, start, length, new_start)
    moved = {vpn: pte for vpn, pte in mm.ptes.items() if start <= vpn < start + length}
    for vpn in moved:
        del mm.ptes[vpn]
    for vpn, pte in moved.items():
        # move_soft_dirty_pte: "Set soft dirty bit so we can notice in userspace when vma
        # was moved"; not for a PTE table or a device-private PMD moved whole
        kept = any(vpn in chunk for chunk in keep)
        mm.ptes[new_start + vpn - start] = replace(pte, soft_dirty=pte.soft_dirty or not kept)


def _dontunmap_complete(mm: Mm, start: int, length: int) -> None:
    """dontunmap_complete: the source VMA stays, empty, without VM_LOCKED; if the whole VMA
    moved it loses its anon_vma (unlink_anon_vmas) and, if anonymous, gets the pgoff of
    its address again (a shmem VMA keeps its object and offset: later faults read the
    object again)."""
    i = next(k for k, v in enumerate(mm.vmas) if v.start <= start < v.end)
    vma = mm.vmas[i] = replace(mm.vmas[i], flags=mm.vmas[i].flags - {"locked"})
    if vma.start == start and vma.end == start + length:
        mm.vmas[i] = replace(vma, anon=None, fork_child=False,
                             shift=vma.shift if vma.obj is not None else 0)
