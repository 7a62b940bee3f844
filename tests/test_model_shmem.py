"""Memory backed by a shmem object (`map shared`, `map memfd`, `map file`) as the model
states it (reference/shmem.py), checked against 7.2.13, 6.12.117 and 6.1.192 by
tests/test_vm_model_shmem.py and the corpus (hmm_tests_migrate_shared.txt, ...)."""

import errno

import pytest

from test_model_support import pattern, patterns, program, zeros

from harness.prog.observation import PM_FILE, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY
from reference import check, expected
from reference.uapi import PROT_NONE, PROT_READ, PROT_WRITE

from test_model_support import ok, trace

EINVAL, EOPNOTSUPP, ENOENT, EACCES = errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT, errno.EACCES


def only(prog, op_index: int, release: str = "7.2.13"):
    """The single outcome the model allows for op `op_index`."""
    (expect,) = expected(prog, release)[op_index]
    return expect


def present(prog, op_index: int) -> list[bool]:
    return [bool(spec.flags & PM_PRESENT) for spec in only(prog, op_index).pagemap]


# ---------------------------------------------------------------- sharing

def test_fork_shares_a_shared_mapping_instead_of_copying_it():
    # vma_needs_copy: no anon_vma, so no page table is copied and no notifier fires; the
    # child faults the same page-cache folios in, and its writes are the parent's
    prog = program("""
        region s pages=2
        p0 open d dmirror0
        p0 map s[0:2] shared
        p0 write s[0:2] seed=1
        p0 dev_read d s[0:2]
        p0 fork p1
        p0 dev_read d s[0:2]
        p1 read s[0:2]
        p1 write s[1:2] seed=2
        p0 read s[0:2]
    """)
    assert only(prog, 5).faults == (0,)   # the parent's mirror kept its entries
    assert only(prog, 6).pages == patterns(prog, 1, "s", 0, 2)
    assert only(prog, 8).pages == (pattern(prog, 1, "s", 0), pattern(prog, 2, "s", 1))


def test_a_memfd_page_outlives_its_mapping_and_is_seen_by_any_mapping_of_the_region():
    prog = program("""
        region m pages=4
        p0 map m[0:4] memfd
        p0 write m[1:2] seed=7
        p0 munmap m[0:4]
        p0 map m[1:3] memfd
        p0 read m[1:3]
        p0 fork p1
        p1 munmap m[1:3]
        p1 map m[0:2] memfd
        p1 read m[0:2]
    """)
    assert only(prog, 4).pages == (pattern(prog, 7, "m", 1),) + zeros(1)
    assert only(prog, 8).pages == zeros(1) + (pattern(prog, 7, "m", 1),)


def test_each_shared_anonymous_mapping_has_its_own_object():
    # shmem_zero_setup: a new object per mmap, so munmap and map again reads zeros
    prog = program("""
        region s pages=1
        p0 map s[0:1] shared
        p0 write s[0:1] seed=1
        p0 munmap s[0:1]
        p0 map s[0:1] shared
        p0 read s[0:1]
    """)
    assert only(prog, 4).pages == zeros(1)


def test_a_private_file_mapping_reads_the_page_cache_and_copies_on_write():
    # do_read_fault maps the page-cache folio read-only; the write to it is wp_page_copy
    # (MMU_NOTIFY_CLEAR: the device faults again), and the copy is private
    prog = program("""
        region f pages=2
        p0 open d dmirror0
        p0 map f[0:2] file
        p0 read f[0:2]
        p0 snapshot d f[0:2]
        p0 dev_read d f[0:2]
        p0 write f[0:1] seed=3
        p0 dev_read d f[0:2]
        p0 fork p1
        p1 munmap f[0:2]
        p1 map f[0:2] file
        p1 read f[0:2]
        p0 pagemap f[0:2]
    """)
    assert only(prog, 3).snapshot == bytes((PROT_READ, PROT_READ))
    assert only(prog, 4).faults == (1,)
    assert only(prog, 6).faults == (1,)
    assert only(prog, 10).pages == zeros(2)   # the file never saw the private write
    copied, cached = only(prog, 11).pagemap
    assert not copied.flags & PM_FILE and cached.flags & PM_FILE


def test_a_write_to_an_unfaulted_private_file_page_copies_without_a_notifier():
    # do_cow_fault: the PTE was none, so no MMU notifier; the mirror keeps the next page
    prog = program("""
        region f pages=2
        p0 open d dmirror0
        p0 map f[0:2] file
        p0 dev_read d f[1:2]
        p0 write f[0:1] seed=1
        p0 dev_read d f[1:2]
    """)
    assert only(prog, 4).faults == (0,)


def test_a_shared_page_is_writable_as_soon_as_it_is_mapped_and_follows_mprotect():
    # vm_page_prot of a writable shared VMA has the write bit; change_pte_range applies it
    prog = program("""
        region m pages=2
        p0 open d dmirror0
        p0 map m[0:2] memfd
        p0 read m[0:2]
        p0 snapshot d m[0:2]
        p0 mprotect m[0:2] r
        p0 snapshot d m[0:2]
        p0 mprotect m[0:2] rw
        p0 snapshot d m[0:2]
    """)
    assert only(prog, 3).snapshot == bytes((PROT_WRITE, PROT_WRITE))
    assert only(prog, 5).snapshot == bytes((PROT_READ, PROT_READ))
    assert only(prog, 7).snapshot == bytes((PROT_WRITE, PROT_WRITE))


# ---------------------------------------------------------------- fault-around

def test_a_read_fault_maps_the_cached_pages_around_it_within_the_vma():
    # do_fault_around: 16 PTEs aligned down, clamped to the VMA start and then 16 from there
    prog = program("""
        region s pages=40
        p0 map s[0:40] shared
        p0 write s[0:40] seed=1
        p0 madvise s[0:40] dontneed
        p0 read s[20:21]
        p0 pagemap s[0:40]
        p0 munmap s[0:3]
        p0 read s[5:6]
        p0 pagemap s[0:40]
    """)
    assert present(prog, 4) == [16 <= i < 32 for i in range(40)]
    assert present(prog, 7) == [3 <= i < 19 or 16 <= i < 32 for i in range(40)]


def test_fault_around_maps_only_pages_already_in_the_page_cache():
    prog = program("""
        region m pages=16
        p0 map m[0:16] memfd
        p0 write m[2:4] seed=1
        p0 madvise m[0:16] dontneed
        p0 read m[8:9]
        p0 pagemap m[0:16]
    """)
    assert present(prog, 4) == [i in (2, 3, 8) for i in range(16)]


# ---------------------------------------------------------------- pagemap

def test_pagemap_shows_a_page_cache_folio_as_file_and_not_anonymous():
    prog = program("""
        region s pages=1
        p0 map s[0:1] shared
        p0 write s[0:1] seed=1
        p0 pagemap s[0:1]
        p0 fork p1
        p1 read s[0:1]
        p0 pagemap s[0:1]
    """)
    (once,) = only(prog, 2).pagemap
    assert once.flags & PM_FILE and once.flags & PM_MMAP_EXCLUSIVE
    assert once.count == 1 and once.kflags == 0     # no KPF_ANON, no PG_anon_exclusive
    (twice,) = only(prog, 5).pagemap
    assert not twice.flags & PM_MMAP_EXCLUSIVE and twice.count == 2


# ---------------------------------------------------------------- madvise

def test_dontneed_zaps_a_shared_mapping_but_the_object_keeps_the_content():
    prog = program("""
        region m pages=2
        region f pages=2
        p0 map m[0:2] memfd
        p0 map f[0:2] file
        p0 write m[0:2] seed=1
        p0 write f[0:2] seed=2
        p0 madvise m[0:2] dontneed
        p0 madvise f[0:2] dontneed
        p0 read m[0:2]
        p0 read f[0:2]
    """)
    assert only(prog, 6).pages == patterns(prog, 1, "m", 0, 2)
    assert only(prog, 7).pages == zeros(2)   # the private copies are gone


def test_free_and_wipeonfork_are_einval_on_a_shmem_vma_after_the_vmas_before_it():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 map a[2:4] shared
        p0 madvise a[0:4] free
        p0 madvise a[0:4] wipeonfork
        p0 fork p1
        p1 pagemap a[0:4]
    """)
    assert only(prog, 2).errno == (EINVAL,)     # madvise_free_single_vma: not anonymous
    assert only(prog, 3).errno == (EINVAL,)     # MADV_WIPEONFORK needs anonymous memory
    # a[0:2] got VM_WIPEONFORK before the walk reached the shared VMA: the child has it
    assert present(prog, 5) == [False] * 4


def test_mergeable_is_ignored_on_a_shared_vma():
    # ksm_compatible: "Just ignore the advice" for VM_SHARED: no flag, no split notifier
    prog = program("""
        region s pages=600
        p0 open d dmirror0
        p0 map s[0:600] shared
        p0 dev_write d s[0:4] seed=1
        p0 madvise s[1:2] mergeable
        p0 dev_write d s[0:4] seed=2
    """)
    assert only(prog, 4).faults == (0,)


def test_mlock_of_a_shared_mapping_populates_with_read_faults():
    # populate_vma_page_range: FOLL_WRITE only for a private writable VMA; a shared page
    # is writable anyway, and a private file page stays the page-cache folio
    prog = program("""
        region s pages=2
        region f pages=2
        p0 open d dmirror0
        p0 map s[0:2] shared
        p0 map f[0:2] file
        p0 mlock s[0:2]
        p0 mlock f[0:2]
        p0 snapshot d s[0:2]
        p0 pagemap f[0:2]
    """)
    assert only(prog, 5).snapshot == bytes((PROT_WRITE, PROT_WRITE))
    assert all(not spec.flags & PM_FILE for spec in only(prog, 6).pagemap)   # COWed


def test_pageout_swaps_a_dirty_page_cache_folio_and_drops_a_clean_one():
    # shrink_folio_list: a dirty shmem folio goes to swap (shmem_writeout) and comes back
    # on the next fault; a clean one is freed. A device write through the mirror
    # (dmirror_do_write) does not dirty the folio: its data goes with it.
    prog = program("""
        region s pages=8
        p0 open d dmirror0
        p0 map s[0:8] shared
        p0 write s[0:2] seed=1
        p0 dev_read d s[4:6]
        p0 dev_write d s[4:5] seed=2
        p0 dev_write d s[6:7] seed=3
        p0 madvise s[0:8] pageout
        p0 pagemap s[0:8]
        p0 read s[0:8]
    """)
    assert present(prog, 7) == [False] * 8
    assert only(prog, 8).pages == (patterns(prog, 1, "s", 0, 2) + zeros(4)
                                   + (pattern(prog, 3, "s", 6),) + zeros(1))


def test_pageout_leaves_a_page_cache_folio_mapped_twice():
    prog = program("""
        region m pages=1
        p0 map m[0:1] memfd
        p0 write m[0:1] seed=1
        p0 fork p1
        p1 read m[0:1]
        p0 madvise m[0:1] pageout
        p0 pagemap m[0:1]
    """)
    assert present(prog, 5) == [True]


# ---------------------------------------------------------------- device ops

def test_exclusive_fails_on_a_page_cache_folio_and_works_on_a_private_copy():
    # make_device_exclusive: !folio_test_anon -> -EOPNOTSUPP after GUP faulted it in
    prog = program("""
        region s pages=2
        region f pages=2
        p0 open d dmirror0
        p0 map s[0:2] shared
        p0 map f[0:2] file
        p0 exclusive d s[0:2]
        p0 snapshot d s[0:2]
        p0 exclusive d f[0:2]
        p0 check_exclusive d f[0:2]
    """)
    assert only(prog, 3).errno == (EOPNOTSUPP,)
    assert only(prog, 4).snapshot == bytes((PROT_WRITE, PROT_NONE))   # the first was faulted
    assert only(prog, 5).errno == (0,)
    assert only(prog, 6).errno == (errno.EPERM,)


@pytest.mark.parametrize("release, error", [("7.2.13", EOPNOTSUPP), ("6.12.117", errno.EBUSY),
                                            ("6.1.192", errno.EBUSY)])
def test_exclusive_stops_at_a_shared_page_and_keeps_the_anonymous_pages_before_it(
        release, error):
    # 7.2: make_device_exclusive per page, -EOPNOTSUPP at the shared one. 6.x: the batch's
    # GUP gets both, page_make_device_exclusive skips the page-cache folio,
    # dmirror_atomic_map maps the exclusive one, and the short count is -EBUSY
    prog = program("""
        region a pages=2
        p0 open d dmirror0
        p0 map a[0:1]
        p0 map a[1:2] shared
        p0 exclusive d a[0:2]
        p0 check_exclusive d a[0:1]
        p0 pagemap a[0:2]
    """)
    assert only(prog, 3, release).errno == (error,)
    assert only(prog, 4, release).errno == (errno.EPERM,)
    anon, shared = only(prog, 5, release).pagemap
    assert not anon.flags & PM_PRESENT and shared.flags & PM_FILE


def test_migrate_to_dev_collects_page_cache_folios_but_does_not_move_them():
    # migrate_vma_collect_hole skips holes of a non-anonymous VMA; migrate_vma_pages keeps
    # page-cache folios ("only support anonymous memory"); the collect notifier (owner this
    # device) still erased dmirror1's entries, dmirror0's stay and make the read back work
    prog = program("""
        region s pages=4
        p0 open d dmirror0
        p0 open e dmirror1
        p0 map s[0:4] shared
        p0 migrate_to_dev d s[0:4]
        p0 write s[0:2] seed=1
        p0 dev_read d s[0:2]
        p0 dev_read e s[0:2]
        p0 migrate_to_dev d s[0:2]
        p0 dev_read e s[0:2]
        p0 pagemap s[0:2]
    """)
    assert only(prog, 3).errno == (ENOENT,)
    assert only(prog, 7).errno == (0,) and only(prog, 7).pages == patterns(prog, 1, "s", 0, 2)
    assert only(prog, 8).faults == (1,)
    assert all(spec.flags & PM_FILE for spec in only(prog, 9).pagemap)


def test_move_pages_sees_every_mapping_of_a_shared_page():
    # folio_maybe_mapped_shared counts the child's PTE of the same page-cache folio; the
    # child's read of s[0] mapped s[1] too (fault-around), until it unmaps it
    prog = program("""
        region s pages=2
        p0 map s[0:2] shared
        p0 write s[0:2] seed=1
        p0 fork p1
        p1 read s[0:1]
        p0 move_pages s[0:2] 1
        p1 munmap s[1:2]
        p0 move_pages s[0:2] 1
        p0 move_pages s[0:2]
    """)
    assert only(prog, 4).node_status == ((-EACCES,), (-EACCES,))
    assert only(prog, 6).node_status == ((-EACCES,), (1,))
    assert only(prog, 7).node_status == ((0,), (1,))


def test_on_6_1_an_unfaulted_page_of_a_shmem_vma_is_enoent_for_move_pages():
    # no_page_table: -EFAULT only for an anonymous VMA (or one without a fault handler)
    prog = program("region s pages=1\np0 map s[0:1] shared\np0 move_pages s[0:1]\n")
    assert only(prog, 1, "6.1.192").node_status == ((-ENOENT,),)


def test_mbind_puts_the_policy_on_the_object_for_every_mapping_of_it():
    # shmem_set_policy: the memfd's pages 0..1 are allocated on node 1 from then on, also
    # when another mapping without a VMA policy faults them; a page already there moves
    # only if it is mapped once (queue_folios_pte_range)
    prog = program("""
        region m pages=4
        region n pages=4
        p0 map m[0:4] memfd
        p0 mbind m[0:2] 1
        p0 munmap m[0:4]
        p0 map m[0:4] memfd
        p0 read m[0:4]
        p0 move_pages m[0:4]
        p0 map n[0:4] memfd
        p0 write n[0:2] seed=1
        p0 fork p1
        p1 read n[0:1]
        p1 munmap n[1:4]
        p0 mbind n[0:4] 1
        p0 move_pages n[0:4]
    """)
    assert only(prog, 5).node_status == ((1,), (1,), (0,), (0,))
    # (p1's read mapped n[1] too, by fault-around, until it unmapped it)
    assert only(prog, 12).node_status == ((0,), (1,), (-ENOENT,), (-ENOENT,))


def test_after_clear_soft_dirty_a_shared_mapping_maps_read_only_until_written():
    # clear_refs_write: without VM_SOFTDIRTY, vma_wants_writenotify takes the write bit out
    # of vm_page_prot; a read fault maps read-only, a write fault (wp_page_reuse) makes
    # the page writable and soft-dirty; mprotect rw leaves every PTE read-only (no
    # MM_CP_TRY_CHANGE_WRITABLE: vma_wants_manual_pte_write_upgrade says no once
    # vm_page_prot is write-protected)
    prog = program("""
        region s pages=4
        p0 open d dmirror0
        p0 map s[0:2] shared
        p0 write s[0:2] seed=1
        p0 clear_soft_dirty
        p0 snapshot d s[0:2]
        p0 madvise s[1:2] dontneed
        p0 read s[1:2]
        p0 write s[0:1] seed=2
        p0 snapshot d s[0:2]
        p0 mprotect s[0:2] r
        p0 mprotect s[0:2] rw
        p0 snapshot d s[0:2]
        p0 pagemap s[0:2]
    """)
    assert only(prog, 4).snapshot == bytes((PROT_READ, PROT_READ))
    assert only(prog, 8).snapshot == bytes((PROT_WRITE, PROT_READ))
    assert only(prog, 11).snapshot == bytes((PROT_READ, PROT_READ))
    written, read = only(prog, 12).pagemap
    assert written.flags & PM_SOFT_DIRTY and not read.flags & PM_SOFT_DIRTY


# ---------------------------------------------------------------- mremap

def test_mremap_moves_page_cache_ptes_and_keeps_the_object_offset():
    # copy_vma keeps vm_pgoff of a non-anonymous VMA: t[0:2] maps pages 2..3 of s's memfd,
    # the moved PTEs keep their folios (MMU_NOTIFY_UNMAP over the old range), and a fault
    # in the new place reads the object at the old offset
    prog = program("""
        region s pages=4
        region t pages=4
        p0 map s[0:4] memfd
        p0 write s[0:4] seed=1
        p0 madvise s[3:4] dontneed
        p0 mremap s[2:4] t[0:2]
        p0 read t[0:2]
        p0 pagemap t[0:2]
        p0 mremap t[0:2] 1
        p0 map s[2:4] memfd
        p0 read s[2:4]
    """)
    assert only(prog, 4).pages == patterns(prog, 1, "s", 2, 4)
    assert all(spec.flags & PM_FILE for spec in only(prog, 5).pagemap)
    assert only(prog, 8).pages == patterns(prog, 1, "s", 2, 4)


def test_mremap_dontunmap_leaves_the_source_its_object():
    # dontunmap_complete keeps a non-anonymous VMA's vm_pgoff: the emptied source reads
    # the object again (the private file's copy moved away with the PTE)
    prog = program("""
        region m pages=2
        region f pages=2
        region t pages=4
        p0 map m[0:2] memfd
        p0 map f[0:2] file
        p0 write m[0:2] seed=1
        p0 write f[0:2] seed=2
        p0 mremap m[0:2] t[0:2] dontunmap
        p0 mremap f[0:2] t[2:4] dontunmap
        p0 read m[0:2]
        p0 read f[0:2]
        p0 read t[2:4]
    """)
    assert only(prog, 6).pages == patterns(prog, 1, "m", 0, 2)
    assert only(prog, 7).pages == zeros(2)
    assert only(prog, 8).pages == patterns(prog, 2, "f", 0, 2)


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("kind, op, refused", [
    ("memfd", "p0 mremap s[0:2] t[0:4]",
     "mremap of a shmem or file mapping past the object's size"),
    ("file", "p0 mbind s[0:2] 1", "mbind of a private file mapping"),
])
def test_what_is_not_followed_on_shmem_mappings_is_refused_by_name(kind, op, refused):
    prog = program(f"region s pages=2\nregion t pages=4\np0 map s[0:2] {kind}\n{op}\n")
    verdict = check(prog, trace(ok(), ok()))
    assert verdict.unmodelled_op == refused
