"""uffd-wp over shmem and private file mappings: the uffd-wp PTE marker (7.2 mm/mprotect.c,
mm/memory.c, mm/userfaultfd.c; the same rules in 6.12 and 6.1).

A shmem or file VMA registered for WP (vma_can_userfault: shmem_can_userfault says yes, and
the kernels here have CONFIG_PTE_MARKER_UFFD_WP) keeps its protection in the page tables
even where no page is mapped, because the page cache may still hold the page:
userfaultfd_wp_use_markers is true for every such VMA. So:

- `uffd_wp on` (change_pte_range with MM_CP_UFFD_WP): every pte_none of the range gets a
  PTE_MARKER_UFFD_WP marker (pgtable_populate_needed allocates the page tables for them);
  present and swap-like entries get the bit as in anonymous memory. `uffd_wp off` and
  unregister (MM_CP_UFFD_WP_RESOLVE, change_softleaf_pte) drop the markers: pte_clear.
- A fault on a marker (do_swap_page -> handle_pte_marker -> pte_marker_handle_uffd_wp ->
  do_pte_missing -> do_fault) maps the page as for pte_none, and set_pte_range adds the
  uffd-wp bit (vmf_orig_pte_uffd_wp), which on x86 write-protects (pte_mkuffd_wp; 6.1's
  do_set_pte: pte_mkuffd_wp(pte_wrprotect())). A write fault therefore maps the page
  read-only with the bit — a shared VMA the object's folio, dirty (fault_dirty_shared_page),
  a private one a new exclusive anonymous copy (do_cow_fault) — and the retried access
  goes to do_wp_page -> handle_userfault: SIGBUS for a CPU store, -EFAULT for GUP and
  hmm_range_fault, with the page left mapped.
- A registered VMA never faults around (should_fault_around -> uffd_disable_fault_around),
  and a registered shared VMA has writenotify (vma_wants_writenotify: userfaultfd_wp;
  userfaultfd_set_vm_flags recomputes vm_page_prot when VM_UFFD_WP changes), so its read
  faults map read-only and a write to such a PTE without the bit is wp_page_reuse.
- madvise dontneed (zap_page_range_single_batched, no zap_details: zap_drop_markers is
  false) keeps the markers and turns every entry with the bit into a marker
  (zap_install_uffd_wp_if_needed); munmap drops them (unmap_vmas: ZAP_FLAG_DROP_MARKER).
  Reclaim of a page-cache folio whose PTE has the bit leaves a marker (try_to_unmap_one ->
  pte_install_uffd_wp_if_needed).
- fork: the child's VMA is not registered (dup_userfaultfd without UFFD_FEATURE_EVENT_FORK),
  so copy_pte_marker drops the markers of a copied private file VMA, and a shared VMA is
  not copied at all (vma_needs_copy: the child's VM_UFFD_WP is already gone).
- pagemap: a marker is PM_SWAP | PM_UFFD_WP, frame swp type SWP_PTE_MARKER (the last swap
  type, profile.swp_pte_marker), offset PTE_MARKER_UFFD_WP (1); no soft-dirty bit of its own.
- Elsewhere a marker is like pte_none: snapshot (hmm_vma_handle_pte: pte_none_mostly),
  migrate_to_dev (a shmem VMA's holes are skipped, and so are non-device softleaf
  entries), mprotect (change_softleaf_pte keeps it), smaps (neither a page nor a hole:
  nothing, see smaps.object_swap_pages), move_pages and mbind (no folio).
"""

from __future__ import annotations

from dataclasses import replace

from .state import Folio, Kind, Mm, Pte, Vma, World
from .uffd_wp import FLAG, UffdWriteProtected

PTE_MARKER_UFFD_WP = 1   # the marker bits a uffd-wp marker's swap offset holds


def has_marker(mm: Mm, vpn: int) -> bool:
    return vpn in mm.markers


def uses_markers(vma: Vma) -> bool:
    """userfaultfd_wp_use_markers: a file-backed VMA registered for WP."""
    return vma.obj is not None and FLAG in vma.flags


def protect_holes(mm: Mm, vma: Vma, start: int, end: int) -> None:
    """change_pte_range with MM_CP_UFFD_WP: a marker on every pte_none of [start, end)."""
    if uses_markers(vma):
        mm.markers.update(vpn for vpn in range(start, end) if vpn not in mm.ptes)


def drop_markers(mm: Mm, start: int, end: int) -> None:
    """MM_CP_UFFD_WP_RESOLVE (change_softleaf_pte: pte_clear) or munmap's unmap_vmas
    (ZAP_FLAG_DROP_MARKER): the markers of [start, end) go."""
    if mm.markers:
        mm.markers.difference_update([vpn for vpn in mm.markers if start <= vpn < end])


def protected_entries(mm: Mm, start: int, end: int) -> list[int]:
    """madvise dontneed of [start, end) (inside one VMA): in a registered file VMA
    zap_install_uffd_wp_if_needed replaces every entry with the uffd-wp bit (pte_uffd_wp,
    pte_swp_uffd_wp_any) by a marker, after the zap; existing markers stay
    (zap_nonpresent_ptes without ZAP_FLAG_DROP_MARKER). The vpns that get one."""
    vma = mm.vma_at(start)
    if vma is None or not uses_markers(vma):
        return []
    return [vpn for vpn in range(start, end)
            if (pte := mm.ptes.get(vpn)) is not None and pte.uffd_wp]


def unmap_keeps(mm: Mm, vma: Vma, vpn: int, pte: Pte) -> None:
    """try_to_unmap_one (reclaim of a page-cache folio): pte_install_uffd_wp_if_needed."""
    if uses_markers(vma) and pte.uffd_wp:
        mm.markers.add(vpn)


def marker_fault(world: World, mm: Mm, vma: Vma, vpn: int, write: bool) -> None:
    """A fault on a marker in a registered VMA: do_fault as for pte_none, the new PTE
    write-protected with the uffd-wp bit (set_pte_range: vmf_orig_pte_uffd_wp); a write then
    faults again on that PTE and do_wp_page hands it to handle_userfault (SIGBUS)."""
    from . import shmem, vma as vmas
    mm.markers.discard(vpn)
    if not write:
        shmem.map_read(world, mm, vma, vpn)
        mm.ptes[vpn] = replace(mm.ptes[vpn], writable=False, uffd_wp=True)
        return
    folio = shmem.get_folio(world, vma, vpn)
    if vma.shared:
        # do_shared_fault: finish_fault maps it with pte_mkdirty (soft-dirty on x86), then
        # fault_dirty_shared_page marks the folio dirty
        page = world.folios[folio]
        world.folios[folio] = replace(page, mapcount=page.mapcount + 1, dirty=True)
        mm.ptes[vpn] = Pte(Kind.PRESENT, folio, False, clean=False, soft_dirty=True,
                           uffd_wp=True)
    else:
        # do_cow_fault: a new exclusive anonymous copy (folio_add_new_anon_rmap)
        vmas.anon_prepare(world, mm, vpn)
        copy = world.new_id()
        world.folios[copy] = Folio(world.folios[folio].content, node=vmas.alloc_node(vma))
        mm.ptes[vpn] = Pte(Kind.PRESENT, copy, False, soft_dirty=True, uffd_wp=True)
    raise UffdWriteProtected(vpn)
