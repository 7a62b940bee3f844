"""userfaultfd write-protection: the `uffd_register`, `uffd_unregister` and `uffd_wp` ops
(mm/userfaultfd.c, 7.2) and what a uffd-wp PTE does to later faults.

The runner gives each process its own userfaultfd at its first uffd op (UFFD_API with
UFFD_FEATURE_SIGBUS only), registered for its own mm; so an mm has at most one context and
a VMA's VM_UFFD_WP flag (Vma.flags "uffd_wp") says all the model needs about its
vm_userfaultfd_ctx. Like the other flags it takes part in merges (is_mergeable_vma also
compares vm_userfaultfd_ctx) and anon_vma sharing.

- `uffd_register` (userfaultfd_register, UFFDIO_REGISTER_MODE_WP): -EINVAL when no VMA
  lies in the range (vma_find); every VMA in it passes vma_can_userfault (private
  anonymous, VM_MAYWRITE even for PROT_NONE; shmem and file VMAs too, with PTE markers:
  uffd_shmem.py); userfaultfd_register_range then gives each
  VMA piece VM_UFFD_WP (vma_modify_flags_uffd: merge or split like mprotect, holes
  skipped). Nothing else: no PTE changes, no notifier.
- `uffd_unregister` (userfaultfd_unregister): -EINVAL when no VMA lies in the range; each
  registered piece goes through userfaultfd_clear_vma: uffd_wp_range(..., false) over the
  piece (change_protection with MM_CP_UFFD_WP_RESOLVE | MM_CP_TRY_CHANGE_WRITABLE for a
  VM_WRITE VMA: the notifier, bits cleared, PTEs rewritten like mprotect to the same
  protection), then the flag goes (merge or split).
- `uffd_wp on|off` (mwriteprotect_range): VMA by VMA over the range, holes skipped:
  -ENOENT at the first VMA not registered for WP (earlier ones are done) and when no VMA
  lies in the range; each piece: uffd_wp_range -> change_protection (MMU_NOTIFY_
  PROTECTION_VMA; `on`: MM_CP_UFFD_WP, every present PTE, the zero page included, becomes
  read-only with the uffd-wp bit; pte_none gets nothing, since an anonymous VMA uses no
  markers without UFFD_FEATURE_WP_UNPOPULATED, userfaultfd_wp_use_markers; `off`: as for
  unregister).

A write fault on a PTE with the bit in a VMA registered for WP (userfaultfd_pte_wp) goes
from do_wp_page to handle_userfault, which with UFFD_FEATURE_SIGBUS returns
VM_FAULT_SIGBUS: SIGBUS for a CPU store, -EFAULT for GUP (exclusive) and hmm_range_fault
(dev_write). A read is unaffected. Elsewhere the bit stays with the entry: mprotect keeps
it (change_present_ptes: pte_modify keeps _PAGE_UFFD_WP) and does not make such a PTE
writable (maybe_change_pte_writable); swap-out and swap-in (try_to_unmap_one,
do_swap_page: the page comes back read-only with the bit), migration to the device and
back and NUMA migration/compaction (migration entries and remove_migration_pte),
device-exclusive entries (restore_exclusive_pte) carry it. A zero page migrated to the
device loses it (migrate_vma_insert_page makes a fresh entry, docs/findings.md #13). Fork
drops it in the child with the VMA's registration (dup_userfaultfd without
UFFD_FEATURE_EVENT_FORK resets the child's VMA, then __copy_present_ptes /
copy_nonpresent_pte clear the bit for a VMA without userfaultfd_wp); zap drops it with
the PTE (anonymous VMAs get no marker: pte_install_uffd_wp_if_needed).

Not modelled yet, refused: mremap with registered VMAs, and a GUP write fault on a uffd-wp
page where the op's error is not stated (madvise populate_write, mlock's populate).
"""

from __future__ import annotations

from harness.prog.ops import (
    KsmMerge, Mremap, Smaps, Switch, UffdRegister, UffdUnregister,
    UffdWriteprotect,
)

from . import mm as cpu, shmem, thp, uffd_shmem as markers, vma as vmas
from .expect import EINVAL, ENOENT, done, fail
from .places import Places
from .refuse import Unmodelled
from .state import Kind, Vma, World
from .uffd_wp import FLAG

# ------------------------------------------------------------------ the ops

def _with_flag(vma: Vma) -> dict:
    return {"flags": vma.flags | {FLAG}}


def _without_flag(vma: Vma) -> dict:
    return {"flags": vma.flags - {FLAG}}


def _target(world: World, op: UffdRegister | UffdUnregister, places: Places):
    """The caller's mm and the range's page numbers."""
    return (world.procs[op.proc], *places.vpns(op.range))


def _no_vma(world: World, function: str):
    return [(fail(EINVAL, f"{function}: vma_find finds no VMA in the range -> -EINVAL"),
             world)]


def _set_registration(world: World, mm_id, start: int, end: int, change) -> None:
    """The VMA flag change of (un)registering, holes skipped; a VMA split inside a PMD
    splits it (userfaultfd_register_range / userfaultfd_clear_vma -> vma_modify_flags).
    A shared VMA whose VM_UFFD_WP changed gets its vm_page_prot recomputed
    (userfaultfd_set_vm_flags -> vma_set_page_prot: writenotify while registered)."""
    mm = world.mms[mm_id]
    flipped = [max(start, vma.start) for vma in vmas.overlaps(mm, start, end)
               if vma.shared and (FLAG in vma.flags) != (FLAG in change(vma)["flags"])]
    _, _, splits = vmas.modify(mm, start, end, change, world.profile, stop_at_hole=False)
    for vma, vpn in splits:
        cpu.split_pmd(world, mm_id, vma, vpn)
    for vpn in flipped:
        shmem.set_page_prot(mm, vpn)


def register(world: World, op: UffdRegister, places: Places):
    mm_id, start, end = _target(world, op, places)
    if not vmas.overlaps(world.mms[mm_id], start, end):
        return _no_vma(world, "userfaultfd_register")
    _set_registration(world, mm_id, start, end, _with_flag)
    return [(done("userfaultfd_register_range: every VMA in the range passes "
                  "vma_can_userfault (anonymous, or shmem: shmem_can_userfault, with "
                  "PTE markers) and has VM_MAYWRITE"), world)]


def unregister(world: World, op: UffdUnregister, places: Places):
    mm_id, start, end = _target(world, op, places)
    mm = world.mms[mm_id]
    if not vmas.overlaps(mm, start, end):
        return _no_vma(world, "userfaultfd_unregister")
    for vma in vmas.overlaps(mm, start, end):
        if FLAG in vma.flags:
            # userfaultfd_clear_vma: uffd_wp_range(..., false) before the flags change
            _split_cut_pmds(world, mm_id, mm, max(start, vma.start), min(end, vma.end))
            cpu.change_protection(world, mm_id, mm, max(start, vma.start),
                                  min(end, vma.end), uffd_wp=False)
            markers.drop_markers(mm, max(start, vma.start), min(end, vma.end))
    _set_registration(world, mm_id, start, end, _without_flag)
    return [(done("userfaultfd_unregister: the registered VMAs of the range are "
                  "unprotected and lose VM_UFFD_WP"), world)]


def writeprotect(world: World, op: UffdWriteprotect, places: Places):
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    enable = op.protect is Switch.ON
    found = vmas.overlaps(mm, start, end)
    if not found:
        return [(fail(ENOENT, "mwriteprotect_range: no VMA in the range -> -ENOENT"), world)]
    if world.profile.uffd_wp_single_vma and \
            (found[0].start > start or found[0].end < end or FLAG not in found[0].flags):
        return [(fail(ENOENT, "mwriteprotect_range (6.1): find_dst_vma wants the range "
                              "inside one registered VMA -> -ENOENT, nothing done"), world)]
    pieces = []
    unregistered = None
    for vma in found:
        if FLAG not in vma.flags:
            unregistered = vma
            break
        pieces.append((max(start, vma.start), min(end, vma.end)))
    for piece_start, piece_end in pieces:
        _split_cut_pmds(world, mm_id, mm, piece_start, piece_end)
        cpu.change_protection(world, mm_id, mm, piece_start, piece_end, uffd_wp=enable)
        if enable:
            markers.protect_holes(mm, mm.vma_at(piece_start), piece_start, piece_end)
        else:
            markers.drop_markers(mm, piece_start, piece_end)
    if unregistered is not None:
        return [(fail(ENOENT, f"mwriteprotect_range: {places.name(max(start, unregistered.start))}"
                              "'s VMA is not registered for WP (userfaultfd_wp) -> -ENOENT "
                              "(the VMAs before it were done)"), world)]
    return [(done("mwriteprotect_range: every VMA of the range is registered for WP"), world)]


def _split_cut_pmds(world: World, mm_id: int, mm, start: int, end: int) -> None:
    """change_pmd_range: a huge PMD (a THP or the huge zero page) that [start, end) covers
    in part is split first (__split_huge_pmd: MMU_NOTIFY_CLEAR over its 2 MiB, the PTEs
    keeping the PMD's bits), and its PTEs in the range are then changed one by one; a PMD
    covered whole is changed as one (change_huge_pmd: the uffd-wp bit, and write access
    as for the PTEs of an exclusive folio, can_change_pmd_writable), which the model's
    per-page entries of the PMD follow."""
    for index in sorted({thp.pmd_of(start), thp.pmd_of(end - 1)}):
        base = index * thp.PMD_PAGES
        if index in mm.pmds and not (start <= base and base + thp.PMD_PAGES <= end):
            cpu.invalidate(world, mm_id, base, base + thp.PMD_PAGES)
            thp.split_pmd_mapping(mm, index)


# ------------------------------------------------------------------ the guard

def armed(world: World) -> bool:
    """Some VMA is registered for WP or some PTE has the uffd-wp bit (unregister and fork
    clear the bits with the registration, so the flag alone tells)."""
    return any(FLAG in vma.flags for mm in world.mms.values() for vma in mm.vmas)


# mremap of a registered VMA goes through mremap_userfaultfd_prep (without
# UFFD_FEATURE_EVENT_REMAP the new VMA loses its registration) and move_ptes clears the
# bits for it; KSM's replace_page maps the KSM page with a fresh PTE: not followed yet.
GUARDED = (Mremap, KsmMerge)
def refuse_unfollowed(world: World, op, places: Places) -> None:
    """Raise Unmodelled for an op the model has not followed with uffd-wp state (or KSM
    pages) around."""
    if isinstance(op, Smaps):
        _refuse_ksm_pages(world, op, places)
    if not armed(world):
        return
    if isinstance(op, GUARDED):
        raise Unmodelled(f"{op.keyword} with userfaultfd-wp registered memory",
                         "mremap_userfaultfd_prep and move_ptes are not followed; ksmd's "
                         "replace_page drops the uffd-wp bit (docs/findings.md #23)")


def _refuse_ksm_pages(world: World, op: Smaps, places: Places) -> None:
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    for vma in vmas.overlaps(mm, start, end):
        if any(vpn in vma and pte.kind is not Kind.ZERO and pte.folio in world.folios
               and world.folios[pte.folio].ksm for vpn, pte in mm.ptes.items()):
            raise Unmodelled("smaps over a KSM page", "KSM accounting is not stated")
