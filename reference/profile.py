"""Named semantics profiles: legitimate differences between kernel versions.

The model states the newest kernel's semantics (7.2). Each switch below names a difference
read in the sources of an older kernel; nothing else differs between the profiles. Sources
read: Debian linux-source 7.2.13, 6.12.117 and 6.1.192. Kernels in between are judged by the
newest profile read at or below their version (6.13..7.1 -> "6.12"), which is a guess for
them until their sources are read.

Differences read but not switched, because no v1 observation shows them: 6.x fires the
mprotect notifier per PMD (change_pmd_range), 7.2 per PUD (change_pud_range), over the same
populated range; 6.x device-exclusive entries drop the folio's rmap; 6.x mremap conceals
VM_ACCOUNT around the source's munmap with its own code (move_vma: excess/split in 6.1,
vma_prev/vma_next in 6.12), leaving the same flags as 7.2's unmap_source_vma; 6.x
do_swap_page frees the swap cache before deciding exclusivity (7.2 after), which changes
nothing for a slot other swap entries still hold; 7.2 restore_exclusive_pte dirties the PTE
(and so sets soft-dirty) of a dirty folio it maps writable, which only happens where
soft-dirty tracking does not ask for a write fault, so the bit is not seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # dmirror_fault() walks the range in chunks of ARRAY_SIZE(pfns): 32 in 7.2, 64 in 6.1 and
    # 6.12 (lib/test_hmm.c). A failing chunk stores no mirror entries, earlier chunks do.
    fault_chunk: int
    # 0: dmirror_exclusive() calls make_device_exclusive() per page and returns its error
    # (7.2). N: it calls make_device_exclusive_range() on N-page batches and returns -EBUSY
    # unless every page of a batch was made exclusive and mapped (6.1, 6.12).
    exclusive_batch: int
    # Device-exclusive entries carry the write permission (make_writable_device_exclusive_
    # entry); change_pte_range() makes them readable and restore_exclusive_pte() maps the
    # page writable only if the entry was writable (6.1, 6.12). In 7.2 the entry has no
    # permission and restore_exclusive_pte() checks VM_WRITE and PageAnonExclusive.
    exclusive_entry_permission: bool
    # is_mergeable_anon_vma(): 7.2 lets a VMA without anon_vma merge with one that has one
    # (case 1, dup_anon_vma); 6.1/6.12 refuse, because the target's empty anon_vma_chain is
    # not singular and the two anon_vmas then differ.
    merge_into_vma_without_anon: bool
    # 6.1 mmap_region() checks `next` first and then merges `prev` only if prev's anon_vma
    # is compatible with next's (can_vma_merge_after(prev, ..., next->anon_vma)).
    mmap_checks_prev_against_next: bool
    # HMM_DMIRROR_FLAGS exists (7.2's dmirror_fops_unlocked_ioctl); older drivers answer the
    # unknown command with -EINVAL from the switch's default (observed on 6.12.117, 6.1.192).
    dmirror_flags: bool
    # swp_type() of the softleaf entries pagemap shows (swap type = MAX_SWAPFILES + ...,
    # include/linux/swap.h): device-private write and read; device-exclusive (7.2 has one
    # type, older kernels a write type with the read type right after it). They move when
    # the set of special swap types changes. Observed: 7.2.13 28/29/30, 6.12.117 27/28/29,
    # 6.1.192 26/27/28.
    swp_device_write: int
    swp_device_read: int
    swp_device_exclusive: int
    # 6.1 pte_to_pagemap_entry sets PM_MMAP_EXCLUSIVE for a non-present entry with a page
    # mapped once (page_mapcount(page) == 1, no pte_present check); newer kernels only for
    # present pages.
    pagemap_swap_exclusive: bool
    # do_swap_page of a swap entry with swap count 1 on a SWP_SYNCHRONOUS_IO device (zram)
    # reads into a fresh folio outside the swap cache, which is "certainly exclusive"
    # (6.1, 6.12); 7.2 always goes through the swap cache (swapin_sync) and trusts only the
    # swap PTE's exclusive bit (pte_swp_exclusive).
    swapin_skips_swapcache: bool = False
    # 6.1 can_change_pte_writable: mprotect makes a PTE writable at once only if it is
    # dirty (pte_dirty); 6.12 and 7.2 ask that only of shared mappings.
    mprotect_writable_needs_dirty: bool = False
    # do_swap_page maps an exclusive page writable on a read fault too (6.12, 7.2: "if
    # ((vma->vm_flags & VM_WRITE) ..."); 6.1 only on a write fault (maybe_mkwrite under
    # FAULT_FLAG_WRITE), so a swapped-in page read first is read-only until a write reuses it.
    swapin_read_maps_writable: bool = True
    # do_mremap before remap_move (6.1, 6.12): a move handles one VMA. The syscall looks
    # the VMA up before mremap_to checks the target for overlap (no VMA: -EFAULT, not
    # -EINVAL), and mremap_to unmaps the target (and, for a shrink, the tail) before
    # vma_to_resize finds that the range runs past its VMA (-EFAULT then, with those
    # unmaps done). 7.2 checks everything first (check_mremap_params, check_prep_vma) and
    # moves every VMA of a same-size range (remap_move).
    mremap_moves_one_vma: bool = False
    # 6.1 copy_vma: an unfaulted VMA kept by MREMAP_DONTUNMAP and copied right next to
    # itself is not merged at all ("simply do not attempt to merge in that case"); 6.12
    # and 7.2 drop only the source from the merge candidates.
    copy_vma_no_merge_beside_kept_source: bool = False
    # VMA_STICKY_FLAGS (7.2): a merge keeps VM_SOFTDIRTY if any part had it. 6.1/6.12 keep
    # the flags of the VMA that survives the merge, and mprotect/madvise/mlock then set the
    # changed VMA's new flags on it (vm_flags_reset): soft-dirty can be lost by a merge.
    vma_softdirty_sticky: bool = False
    # 6.1 remove_migration_pte sets the soft-dirty bit from the migration entry and then
    # calls pte_mkdirty() for a dirty page (folio dirty, migration entry dirty), which on
    # x86 sets soft-dirty too; 6.12 and 7.2 set or clear it from the entry afterwards.
    migration_dirty_sets_soft_dirty: bool = False
    # move_pages looks pages up with follow_page(FOLL_DUMP) (6.1: add_page_for_migration,
    # do_pages_stat_array): pte_none is -EFAULT (no_page_table); 6.12 and 7.2 use
    # folio_walk_start, which finds no folio: -ENOENT.
    move_pages_follow_page: bool = False
    # smaps_account counts a device-exclusive entry (not present, has a pfn) as private:
    # 6.1 treats only migration entries as "mapcount 1" and finds the page's mapcount 0
    # (the entry dropped the rmap); 6.12 and 7.2 count every non-present entry as shared
    # ("maybe shared, but not sure how often").
    smaps_exclusive_entry_private: bool = False
    # 6.1 mwriteprotect_range works on one VMA: find_dst_vma wants the whole range inside a
    # single registered VMA, else -ENOENT with nothing done; 6.12 and 7.2 walk every VMA of
    # the range (for_each_vma_range) and stop at the first one not registered.
    uffd_wp_single_vma: bool = False
    # 6.1 uffd_wp_range un-protects without MM_CP_TRY_CHANGE_WRITABLE (newprot is the
    # VMA's private, read-only page protection): after `uffd_wp off` or an unregister every
    # present PTE of the range is read-only until a write fault; 6.12 and 7.2 make
    # PageAnonExclusive pages writable at once (vma_wants_manual_pte_write_upgrade).
    uffd_unprotect_read_only: bool = False
    # Transparent huge pages are modelled from 7.2's mm/huge_memory.c (reference/thp.py);
    # older kernels refuse `thp` modes other than never.
    thp: bool = False
    # ksm_merge is modelled (ksm.py, from 7.2's mm/ksm.c; 6.12's and 6.1's scan, merge and
    # unmerge code reads the same but for the switch below); refused where it is False.
    ksm_merge: bool = False
    # 6.1 break_ksm (madvise unmergeable, mremap) takes a write fault (FAULT_FLAG_WRITE) on
    # each KSM page: wp_page_copy maps the copy dirty, soft-dirty and writable with VM_WRITE
    # (maybe_mkwrite); 6.12 and 7.2 take an unshare fault (FAULT_FLAG_UNSHARE): the copy is
    # mapped read-only, clean, with the old PTE's soft-dirty bit.
    ksm_unmerge_write_fault: bool = False
    # stable_page_flags sets KPF_KSM for every anonymous page: 6.12 tests
    # `mapping & PAGE_MAPPING_KSM`, and PAGE_MAPPING_KSM is PAGE_MAPPING_ANON |
    # PAGE_MAPPING_MOVABLE (docs/findings.md #11); 6.1 asks PageKsm, 7.2 compares all the
    # mapping flag bits with FOLIO_MAPPING_KSM.
    kpf_ksm_on_every_anon_page: bool = False
    # 7.2's test_hmm migrates with MIGRATE_VMA_SELECT_COMPOUND and allocates device THPs
    # (dmirror_devmem_alloc_page(dmirror, is_large)): a whole aligned 2 MiB moves as one
    # device-private PMD (device_thp.py). 6.12's and 6.1's drivers select no compound
    # entries, and their migrate_vma_collect_hole fills a hole page by page.
    device_thp: bool = False
    # 6.1/6.12 page_make_device_exclusive_one drops the page's rmap (page_remove_rmap /
    # folio_remove_rmap_pte) but keeps the mapping's reference: compaction isolates such a
    # folio, finds it unmapped (no try_to_migrate), and folio_migrate_mapping sees one
    # reference more than expected (-EAGAIN), so the entry always stays. 7.2's entries keep
    # the mapcount, and try_to_migrate_one takes them (semantics._exclusive_taken).
    exclusive_entry_unmapped: bool = False
    # 6.1 madvise(MADV_POPULATE_*) goes through madvise_walk_vmas: holes are skipped (the
    # result is -ENOMEM once every VMA was populated) and a VMA check_vma_flags refuses
    # ends it with -EINVAL; 6.12 and 7.2 fault the range page by page
    # (faultin_page_range, FOLL_MADV_POPULATE) and stop at the first hole (-ENOMEM) or
    # unsuitable VMA (-EINVAL).
    populate_walks_vmas: bool = False
    # swp_type() of a PTE marker (SWP_PTE_MARKER = MAX_SWAPFILES + SWP_HWPOISON_NUM +
    # SWP_MIGRATION_NUM + SWP_DEVICE_NUM, include/linux/swap.h): the type after the device
    # types, 31 on 7.2 and 6.12; 6.1 still has SWP_SWAPIN_ERROR after it, so 30.
    swp_pte_marker: int = 31
    # 6.1 uffd_wp_range un-protects with newprot = vm_get_page_prot(vm_flags), not the VMA's
    # vm_page_prot: in a shared writable VMA every present PTE of the range becomes
    # writable, even where writenotify wants a write fault (soft-dirty tracking after
    # clear_soft_dirty, or the VMA still registered for uffd-wp). A bug
    # (docs/findings.md #14, fixed in 6.2 by "mm/userfaultfd: rely on vma->vm_page_prot in
    # uffd_wp_range()"); the model follows it so that 6.1 stays checked.
    uffd_unprotect_ignores_writenotify: bool = False
    # 6.1/6.12 dmirror_migrate_alloc_and_copy gives a page migrated without a source page
    # (pte_none, the zero page) MIGRATE_PFN_WRITE when the VMA has VM_WRITE
    # ("!spage && args->vma->vm_flags & VM_WRITE"), so dmirror_migrate_finalize_and_map
    # mirrors it WRITE; 7.2's driver passes only the source's bit (a READ entry, although
    # the PTE it maps is writable: the next device write faults once).
    hole_mirrored_writable: bool = False
    # mprotect_fixup making an anonymous VMA without anon_vma read-only drops VM_ACCOUNT
    # (vm_unacct_memory; 6.12 and 7.2: "except in the anonymous case where no anon_vma has
    # yet to be assigned"); 6.1 keeps it, so such a VMA still shares an anon_vma
    # (anon_vma_compatible) and merges with an accounted neighbour later.
    mprotect_unaccounts_read_only: bool = True


NEWEST = Profile("newest", 32, 0, False, True, False, True, 28, 29, 30, False,
                 vma_softdirty_sticky=True, thp=True, ksm_merge=True,
                 device_thp=True)
V6_12 = Profile("6.12", 64, 64, True, False, False, False, 27, 28, 29, False,
                swapin_skips_swapcache=True, mremap_moves_one_vma=True, ksm_merge=True,
                kpf_ksm_on_every_anon_page=True, exclusive_entry_unmapped=True,
               hole_mirrored_writable=True)
V6_1 = Profile("6.1", 64, 64, True, False, True, False, 26, 27, 28, True,
               swapin_skips_swapcache=True, mprotect_writable_needs_dirty=True,
               swapin_read_maps_writable=False, move_pages_follow_page=True,
               mremap_moves_one_vma=True, copy_vma_no_merge_beside_kept_source=True,
               migration_dirty_sets_soft_dirty=True, ksm_merge=True,
               ksm_unmerge_write_fault=True, smaps_exclusive_entry_private=True,
               uffd_wp_single_vma=True, uffd_unprotect_read_only=True,
               exclusive_entry_unmapped=True, populate_walks_vmas=True, swp_pte_marker=30,
               uffd_unprotect_ignores_writenotify=True, hole_mirrored_writable=True,
               mprotect_unaccounts_read_only=False)


def profile_for(kernel_release: str) -> Profile:
    """The profile for a kernel release such as "7.2.13", "6.12.117" or "6.1.192"."""
    match = re.match(r"(\d+)\.(\d+)", kernel_release)
    if not match:
        return NEWEST
    version = (int(match.group(1)), int(match.group(2)))
    if version >= (7, 2):
        return NEWEST
    if version >= (6, 12):
        return V6_12
    return V6_1
