"""madvise collapse on the real kernel (7.2), judged by the model (reference/collapse.py):
what collapse_possible refuses, PMDs without a PTE table, every kind of entry copied into
the new THP, the notifier the mirror sees, fork, mlock, NUMA and the huge zero page."""

from __future__ import annotations

import pytest

from harness.prog.observation import KPF
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm


def test_collapse_makes_thps_whatever_the_thp_mode_and_einval_where_it_cannot(
        kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=100
        p0 open d dmirror0
        p0 map a[0:1024]
        p0 map b[0:100]
        p0 madvise a[0:512] collapse
        p0 write b[0:1] seed=1
        p0 madvise b[0:100] collapse
        p0 write a[0:512] seed=1
        p0 write a[700:701] seed=2
        p0 madvise a[700:701] dontneed
        p0 dev_read d a[0:514]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p0 pagemap a[510:513]
        p0 dev_read d a[513:514]
        p0 dev_read d a[512:513]
        p0 dev_read d a[0:2]
        p0 snapshot d a[0:2]
        p0 madvise a[1:600] collapse
        p0 madvise a[0:1024] collapse
        p0 pagemap a[699:701]
        p0 read a[699:701]
        p0 madvise a[0:1024] nohugepage
        p0 madvise a[0:1024] collapse
        p0 munmap a[100:101]
        p0 pagemap a[99:102]
        p0 read a[0:2]
    """)
    head = trace.results[11].pagemap[0]
    assert head.has_flag("THP") and head.has_flag("COMPOUND_HEAD")
    assert trace.results[3].errno == 22 and trace.results[10].errno == 0


def test_a_pmd_without_a_table_fails_the_call_but_not_the_other_pmds(kernel_session):
    agrees(kernel_session, """
        region a pages=1536
        p0 map a[0:1536]
        p0 write a[512:513] seed=1
        p0 madvise a[0:1536] collapse
        p0 pagemap a[512:514]
        p0 pagemap a[1024:1025]
        p0 write a[1024:1025] seed=2
        p0 pagemap a[1024:1025]
        p0 madvise a[1024:1536] collapse
        p0 pagemap a[1024:1025]
    """)


def test_swap_device_private_and_exclusive_entries_are_faulted_in_and_copied(kernel_session):
    agrees(kernel_session, """
        region a pages=512
        p0 open d dmirror0
        p0 open e dmirror1
        p0 open f dmirror0
        p0 map a[0:512]
        p0 write a[0:512] seed=3
        p0 madvise a[0:8] pageout
        p0 migrate_to_dev d a[8:16]
        p0 migrate_to_dev e a[24:28]
        p0 exclusive f a[16:24]
        p0 dev_read e a[100:110]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p0 pagemap a[8:10]
        p0 pagemap a[16:18]
        p0 pagemap a[24:26]
        p0 check_exclusive f a[16:24]
        p0 dev_read e a[100:110]
        p0 read a[0:30]
    """)


def test_after_fork_the_child_keeps_the_old_pages(kernel_session):
    agrees(kernel_session, """
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:512] seed=4
        p0 madvise a[0:8] free
        p0 fork p1
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p1 pagemap a[0:2]
        p1 write a[1:2] seed=5
        p1 pagemap a[0:2]
        p0 write a[0:1] seed=6
        p0 pagemap a[0:2]
        p1 read a[0:4]
        p0 read a[0:4]
        p1 exit
        p0 madvise a[0:512] collapse
    """)


def test_mlocked_read_only_and_soft_dirty_clean_pages_collapse(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=512
        region b pages=512
        region c pages=512
        p0 open d dmirror0
        p0 map a[0:512]
        p0 mlock a[0:512]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p0 map b[0:512]
        p0 write b[0:512] seed=1
        p0 mprotect b[0:512] r
        p0 madvise b[0:512] collapse
        p0 snapshot d b[0:2]
        p0 map c[0:512]
        p0 write c[0:512] seed=2
        p0 clear_soft_dirty
        p0 pagemap c[0:1]
        p0 madvise c[0:512] collapse
        p0 pagemap c[0:1]
        p0 clear_soft_dirty
        p0 write c[3:4] seed=3
        p0 pagemap c[0:4]
    """)
    locked, clean = trace.results[4].pagemap[0], trace.results[13].pagemap[0]
    assert trace.results[3].errno == 0 and locked.has_flag("THP")
    assert not clean.soft_dirty and trace.results[15].pagemap[0].soft_dirty


def test_the_thp_goes_to_the_node_of_most_pages_and_a_huge_zero_pmd_stays(kernel_session):
    agrees(kernel_session, """
        region a pages=512
        region b pages=512
        region z pages=512
        p0 map a[0:512]
        p0 mbind a[0:300] 1
        p0 write a[0:512] seed=5
        p0 madvise a[0:512] collapse
        p0 move_pages a[0:2]
        p0 map b[0:512]
        p0 mbind b[0:512] 1
        p0 write b[0:512] seed=6
        p0 move_pages b[0:300] 0
        p0 madvise b[0:512] collapse
        p0 move_pages b[0:2]
        p0 thp always madvise
        p0 map z[0:512]
        p0 read z[0:1]
        p0 madvise z[0:512] collapse
        p0 pagemap z[0:2]
    """)


def test_a_collapse_copies_ksm_pages_and_the_other_process_keeps_them(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 fork p1
        p1 write a[0:4] seed=1
        p0 write a[0:4] seed=1
        p0 madvise a[0:512] mergeable
        p1 madvise a[0:512] mergeable
        p0 ksm_merge
        p0 pagemap a[0:2]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p1 pagemap a[0:2]
        p0 read a[0:2]
        p1 read a[0:2]
        p1 write a[0:1] seed=3
        p1 pagemap a[0:2]
        p1 exit
        p0 madvise a[0:512] collapse
    """)
    assert trace.results[8].pagemap[0].has_flag("KSM")
    assert trace.results[11].pagemap[1].has_flag("KSM")
