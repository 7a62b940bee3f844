"""Device migration of pages mapped by several processes (after fork) on the real kernels
(7.2, 6.12, 6.1), judged by the model: migrate_to_dev of a shared page, migrate_to_sys,
eviction (release, close, exit) of a shared device page, and the MMU_NOTIFY_CLEARs of
try_to_migrate()'s rmap walk (reference/rmap.py)."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_model_shared_device import EVICTION_AFTER_THE_PARENT_COPIED
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_migrate_to_dev_of_shared_pages_and_the_child_write_that_copies(each_kernel):
    # Pages 1 and 2 become one device page each, mapped read-only in both processes; the
    # mirrors of both mms see the walk's CLEARs; the child's write copies page 1.
    _, trace, _ = agrees(each_kernel, """
        region a pages=6
        p0 map a[0:6]
        p0 write a[0:6] seed=1
        p0 open d0 dmirror0
        p0 open d3 dmirror1
        p0 fork p1
        p1 open d1 dmirror0
        p1 open d2 dmirror1
        p1 dev_read d1 a[0:6]
        p1 dev_read d2 a[0:6]
        p0 dev_read d0 a[0:6]
        p0 dev_read d3 a[0:6]
        p0 migrate_to_dev d0 a[1:3]
        p0 pagemap a[0:6]
        p1 pagemap a[0:6]
        p0 snapshot d0 a[0:6]
        p1 snapshot d1 a[0:6]
        p0 dev_read d3 a[3:6]
        p1 dev_read d2 a[3:6]
        p0 dev_read d0 a[0:6]
        p1 write a[1:2] seed=2
        p0 pagemap a[0:6]
        p1 pagemap a[0:6]
        p0 read a[0:6]
        p1 read a[0:6]
    """)
    for process in (12, 13):
        pagemap = trace.results[process].pagemap
        assert [e.swapped for e in pagemap] == [False, True, True, False, False, False]
    assert trace.results[15].snapshot[1:3] == bytes([0x21, 0x21])     # DEV_PRIVATE | READ
    assert trace.results[17].faults == 1       # p1's CLEAR at page 2 erased d2's page 3


def test_migrate_to_dev_of_partly_shared_pages_keeps_each_process_bits(each_kernel):
    # Page 4 is p0's alone (p1 copied it); p1 cleared its soft-dirty bits: the device
    # entries keep each process's own bit, and so do the pages that come back.
    _, trace, _ = agrees(each_kernel, """
        region a pages=6
        p0 map a[0:6]
        p0 write a[0:6] seed=1
        p0 fork p1
        p1 write a[4:5] seed=3
        p1 clear_soft_dirty
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:6]
        p0 pagemap a[0:6]
        p1 pagemap a[0:6]
        p0 snapshot d0 a[0:6]
        p1 write a[0:1] seed=2
        p0 read a[0:6]
        p1 read a[0:6]
        p0 pagemap a[0:6]
        p1 pagemap a[0:6]
        p0 write a[1:2] seed=4
        p0 pagemap a[0:3]
        p1 pagemap a[0:3]
    """)
    assert all(e.soft_dirty for e in trace.results[7].pagemap)
    assert not any(e.soft_dirty for e in trace.results[8].pagemap)


def test_migrate_to_sys_of_a_shared_device_page(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:2]
        p0 fork p1
        p1 open d2 dmirror1
        p1 dev_read d2 a[2:4]
        p0 open d3 dmirror0
        p0 snapshot d3 a[0:4]
        p0 migrate_to_sys d0 a[0:2]
        p1 dev_read d2 a[2:4]
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p0 snapshot d0 a[0:4]
        p1 write a[0:1] seed=2
        p0 read a[0:2]
        p1 read a[0:2]
        p0 pagemap a[0:2]
        p1 pagemap a[0:2]
    """)
    assert trace.results[9].cpages == 2
    assert trace.results[10].faults == 1       # p1's CLEAR at page 1 erased d2's page 2
    assert [e.count for e in trace.results[12].pagemap[:2]] == [2, 2]


def test_release_and_exit_evict_shared_device_pages(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:3]
        p0 fork p1
        p1 clear_soft_dirty
        p1 open d1 dmirror1
        p1 dev_read d1 a[3:4]
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p0 release d0
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p1 dev_read d1 a[3:4]
        p1 write a[0:1] seed=2
        p0 read a[0:3]
        p1 read a[0:3]
        p0 pagemap a[0:3]
        p1 pagemap a[0:3]
    """)
    after = trace.results[12].pagemap
    assert [e.count for e in after] == [2, 2, 2, 2] and not any(e.soft_dirty for e in after)
    agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:3]
        p0 fork p1
        p1 mprotect a[0:4] r
        p1 open d1 dmirror1
        p1 dev_read d1 a[3:4]
        p0 exit
        p1 pagemap a[0:4]
        p1 dev_read d1 a[3:4]
        p1 read a[0:4]
        p1 mprotect a[0:4] rw
        p1 write a[0:1] seed=2
        p1 pagemap a[0:4]
    """)


def test_the_rmap_walk_may_clear_processes_that_no_longer_map_the_page(each_kernel):
    # walk 1: p0's migration of a page p2 shares CLEARs p1, which copied it; walk 2: the
    # eviction of p1's (unshared) device page CLEARs p0, which copied it.
    agrees(each_kernel, """
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 open d0 dmirror0
        p0 fork p2
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:2]
        p0 migrate_to_dev d0 a[0:1]
        p1 dev_read d1 a[0:2]
        p2 pagemap a[0:2]
        p2 read a[0:1]
        p1 dev_read d1 a[0:2]
        p0 pagemap a[0:2]
    """)
    agrees(each_kernel, EVICTION_AFTER_THE_PARENT_COPIED + "        p1 pagemap a[0:2]\n")


def test_uffd_wp_rides_through_shared_device_migration_and_fail_alloc(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 uffd_register a[0:4]
        p1 uffd_wp a[0:2] on
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:3]
        p1 pagemap a[0:4]
        p0 pagemap a[0:4]
        p0 migrate_to_sys d0 a[1:2]
        p1 pagemap a[0:4]
        p0 close d0
        p1 pagemap a[0:4]
        p1 write a[0:1] seed=2
        p1 uffd_wp a[0:2] off
        p1 write a[0:2] seed=3
        p0 read a[0:3]
        p1 read a[0:3]
    """)
    assert [e.uffd_wp for e in trace.results[7].pagemap] == [True, True, False, False]
    agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:4]
        p0 open d0 dmirror0
        p0 flags d0 1
        p0 migrate_to_dev d0 a[0:2]
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p1 dev_read d1 a[0:4]
        p0 migrate_to_dev d0 a[0:2]
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
    """)


def test_numa_migration_and_pageout_walk_the_same_rmap(each_kernel):
    # move_pages and pageout of p1's pages (mapped once) CLEAR p0, which copied them first
    # (its VMA comes first in the anon_vma); p0's move_pages of its copy may CLEAR p1.
    agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p0 write a[0:2] seed=2
        p0 open d0 dmirror1
        p0 dev_read d0 a[0:4]
        p1 move_pages a[0:1] 1
        p0 dev_read d0 a[0:4]
        p1 madvise a[1:2] pageout
        p0 dev_read d0 a[0:4]
        p1 read a[0:2]
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:4]
        p0 move_pages a[0:1] 1
        p1 dev_read d1 a[0:4]
    """)


def test_migrate_to_dev_of_shmem_pages_mapped_by_both_processes(each_kernel):
    # memfd and private file pages mapped by both: collected, unmapped from both (a CLEAR
    # in p1 at least), not migrated, mapped back; the read back sees what p0's walk erased.
    _, trace, _ = agrees(each_kernel, """
        region m pages=3
        region f pages=2
        p0 map m[0:3] memfd
        p0 write m[0:3] seed=1
        p0 map f[0:2] file
        p0 read f[0:2]
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 m[0:3]
        p1 dev_read d1 f[0:2]
        p0 open d0 dmirror0
        p0 dev_read d0 m[0:3]
        p0 migrate_to_dev d0 m[0:2]
        p1 dev_read d1 m[0:3]
        p0 dev_read d0 m[0:3]
        p0 migrate_to_dev d0 f[0:1]
        p1 dev_read d1 f[0:2]
        p0 pagemap m[0:3]
        p1 pagemap m[0:3]
        p1 pagemap f[0:2]
        p1 write m[0:1] seed=2
        p0 read m[0:1]
    """)
    assert trace.results[11].faults == 1 and trace.results[14].faults == 1
