"""Shared anonymous, memfd and private tmpfs-file mappings on the real kernels (7.2, 6.12,
6.1), judged by the model (reference/shmem.py): faults and fault-around, fork, munmap,
mprotect, madvise, mlock, the device ops, move_pages, compaction and pagemap."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

from reference import check

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_fault_around_maps_the_cached_pages_around_a_read_fault(each_kernel):
    agrees(each_kernel, """
        region s pages=40
        region m pages=24
        region f pages=24
        p0 open d dmirror0
        p0 map s[0:40] shared
        p0 write s[0:40] seed=1
        p0 madvise s[0:40] dontneed
        p0 pagemap s[0:40]
        p0 read s[5:6]
        p0 pagemap s[0:40]
        p0 dev_read d s[20:22]
        p0 pagemap s[16:40]
        p0 snapshot d s[0:40]
        p0 munmap s[0:3]
        p0 madvise s[0:40] dontneed
        p0 read s[5:6]
        p0 pagemap s[0:40]
        p0 map m[3:20] memfd
        p0 write m[3:20] seed=2
        p0 munmap m[3:20]
        p0 map m[5:24] memfd
        p0 read m[6:7]
        p0 pagemap m[0:24]
        p0 read m[18:19]
        p0 pagemap m[0:24]
        p0 map f[0:24] file
        p0 write f[0:4] seed=3
        p0 read f[10:11]
        p0 pagemap f[0:24]
        p0 munmap f[0:24]
        p0 map f[2:24] file
        p0 read f[3:4]
        p0 pagemap f[0:24]
        p0 read f[0:24]
    """)


def test_fork_shares_shared_pages_and_copies_private_file_pages(each_kernel):
    agrees(each_kernel, """
        region s pages=8
        region f pages=8
        p0 open d dmirror0
        p0 map s[0:8] shared
        p0 map f[0:8] file
        p0 write s[0:4] seed=1
        p0 read f[0:2]
        p0 write f[2:4] seed=2
        p0 dev_read d s[0:8]
        p0 dev_read d f[0:8]
        p0 fork p1
        p1 pagemap s[0:8]
        p1 pagemap f[0:8]
        p0 dev_read d s[0:8]
        p0 dev_read d f[0:8]
        p1 write s[2:6] seed=3
        p1 write f[0:1] seed=4
        p0 read s[0:8]
        p0 read f[0:8]
        p0 pagemap s[0:8]
        p0 pagemap f[0:8]
        p0 dev_write d s[0:2] seed=5
        p1 read s[0:3]
        p0 move_pages s[0:8]
        p0 move_pages s[0:8] 1
        p0 move_pages f[0:8] 1
        p1 open e dmirror1
        p1 dev_write e f[4:6] seed=6
        p0 read f[4:6]
        p1 exit
        p0 move_pages s[0:8] 0
        p0 pagemap s[0:8]
    """)


def test_device_ops_mprotect_madvise_and_mlock_on_shmem_mappings(each_kernel):
    agrees(each_kernel, """
        region s pages=8
        region m pages=8
        region f pages=8
        p0 open d dmirror0
        p0 open e dmirror1
        p0 map s[0:8] shared
        p0 map m[0:8] memfd
        p0 map f[0:8] file
        p0 write s[0:3] seed=1
        p0 dev_read d s[0:4]
        p0 dev_read e s[0:4]
        p0 migrate_to_dev d s[0:4]
        p0 dev_read e s[0:4]
        p0 migrate_to_dev d s[0:8]
        p0 snapshot d s[0:8]
        p0 pagemap s[0:8]
        p0 read f[0:4]
        p0 pagemap f[0:4]
        p0 migrate_to_dev d f[0:4]
        p0 migrate_to_dev e f[0:2]
        p0 pagemap f[0:4]
        p0 snapshot d f[0:4]
        p0 migrate_to_sys d f[0:4]
        p0 read f[0:4]
        p0 dev_write d m[2:6] seed=2
        p0 migrate_to_dev e m[0:8]
        p0 migrate_to_sys e m[0:8]
        p0 read m[0:8]
        p0 mprotect m[0:8] r
        p0 snapshot d m[0:8]
        p0 dev_write d m[0:2] seed=3
        p0 mprotect m[0:8] rw
        p0 snapshot d m[0:8]
        p0 dev_write d m[0:2] seed=3
        p0 madvise m[0:4] dontneed
        p0 read m[0:4]
        p0 madvise m[0:8] free
        p0 madvise f[0:8] free
        p0 madvise s[0:8] wipeonfork
        p0 madvise s[0:8] mergeable
        p0 madvise f[0:8] mergeable
        p0 madvise s[0:8] cold
        p0 madvise m[0:8] willneed
        p0 madvise m[0:8] populate_write
        p0 mlock s[0:8]
        p0 mlock f[0:8]
        p0 pagemap f[0:8]
        p0 munlock f[0:8]
        p0 munmap s[2:4]
        p0 pagemap s[0:8]
        p0 compact
        p0 pagemap m[0:8]
        p0 dev_read d m[0:8]
    """)


def test_exclusive_on_shared_and_private_file_pages(each_kernel):
    agrees(each_kernel, """
        region a pages=2
        region f pages=4
        region m pages=2
        p0 open d dmirror0
        p0 map a[0:1]
        p0 map a[1:2] shared
        p0 exclusive d a[0:2]
        p0 check_exclusive d a[0:1]
        p0 pagemap a[0:2]
        p0 map f[0:4] file
        p0 read f[0:2]
        p0 exclusive d f[0:4]
        p0 check_exclusive d f[0:4]
        p0 pagemap f[0:4]
        p0 read f[0:4]
        p0 map m[0:2] memfd
        p0 exclusive d m[0:2]
        p0 snapshot d m[0:2]
        p0 pagemap m[0:2]
    """)


def test_move_pages_counts_every_mapping_and_fault_around_maps_the_neighbours(each_kernel):
    agrees(each_kernel, """
        region s pages=16
        region a pages=4
        p0 map s[0:16] shared
        p0 write s[0:8] seed=1
        p0 map a[0:2]
        p0 map a[2:4] shared
        p0 madvise a[0:4] free
        p0 madvise a[0:4] wipeonfork
        p0 write a[0:4] seed=2
        p0 fork p1
        p1 pagemap a[0:4]
        p1 move_pages s[0:16]
        p1 read s[3:4]
        p0 move_pages s[0:8] 1
        p1 munmap s[4:8]
        p0 move_pages s[0:8] 1
        p0 move_pages s[0:16]
        p1 pagemap s[0:8]
    """)


def test_pageout_swaps_dirty_page_cache_folios_and_drops_clean_ones(each_kernel):
    agrees(each_kernel, """
        region s pages=8
        region m pages=4
        region f pages=4
        p0 open d dmirror0
        p0 map s[0:8] shared
        p0 write s[0:2] seed=1
        p0 dev_read d s[4:6]
        p0 dev_write d s[4:5] seed=2
        p0 dev_write d s[6:7] seed=3
        p0 madvise s[0:8] pageout
        p0 pagemap s[0:8]
        p0 read s[0:8]
        p0 pagemap s[0:8]
        p0 madvise s[0:8] pageout
        p0 madvise s[0:8] willneed
        p0 read s[0:8]
        p0 map m[0:4] memfd
        p0 write m[0:2] seed=4
        p0 munmap m[0:4]
        p0 map m[0:4] memfd
        p0 read m[0:4]
        p0 fork p1
        p1 read m[0:1]
        p0 madvise m[0:4] pageout
        p0 pagemap m[0:4]
        p1 pagemap m[0:4]
        p0 read m[0:4]
        p1 munmap m[0:4]
        p0 map f[0:4] file
        p0 read f[0:2]
        p0 write f[2:3] seed=5
        p0 madvise f[0:4] pageout
        p0 pagemap f[0:4]
        p0 read f[0:4]
        p0 pagemap f[0:4]
    """)


def test_mremap_of_shmem_mappings(each_kernel):
    agrees(each_kernel, """
        region s pages=4
        region t pages=8
        region f pages=2
        p0 open d dmirror0
        p0 map s[0:4] memfd
        p0 write s[0:4] seed=1
        p0 madvise s[3:4] dontneed
        p0 dev_read d s[0:4]
        p0 mremap s[2:4] t[0:2]
        p0 dev_read d t[0:2]
        p0 read t[0:2]
        p0 pagemap t[0:2]
        p0 mremap t[0:2] 1
        p0 map s[2:4] memfd
        p0 read s[2:4]
        p0 mremap s[0:2] t[4:6] dontunmap
        p0 read s[0:2]
        p0 pagemap s[0:4]
        p0 map f[0:2] file
        p0 write f[0:2] seed=2
        p0 mremap f[0:2] t[6:8] dontunmap
        p0 read f[0:2]
        p0 read t[6:8]
        p0 pagemap t[0:8]
    """)


def test_mbind_sets_the_objects_policy(each_kernel):
    agrees(each_kernel, """
        region m pages=4
        region n pages=4
        region s pages=4
        p0 map m[0:4] memfd
        p0 mbind m[0:2] 1
        p0 munmap m[0:4]
        p0 map m[0:4] memfd
        p0 read m[0:4]
        p0 move_pages m[0:4]
        p0 map n[0:4] memfd
        p0 map s[0:4] shared
        p0 write n[0:2] seed=1
        p0 write s[0:4] seed=2
        p0 fork p1
        p1 read n[0:1]
        p1 munmap n[1:4]
        p0 mbind n[0:4] 1
        p0 move_pages n[0:4]
        p1 move_pages n[0:1]
        p0 mbind s[1:3] 1
        p0 move_pages s[0:4]
        p0 madvise s[0:4] pageout
        p1 read s[0:4]
        p1 move_pages s[0:4]
        p1 exit
        p0 read s[0:4]
        p0 move_pages s[0:4]
        p0 mbind s[0:4] 0
        p0 move_pages s[0:4]
    """)


def test_clear_soft_dirty_write_protects_shared_mappings(each_kernel):
    agrees(each_kernel, """
        region s pages=4
        region m pages=8
        region f pages=2
        p0 open d dmirror0
        p0 map s[0:2] shared
        p0 map m[0:4] memfd
        p0 map f[0:2] file
        p0 write s[0:2] seed=1
        p0 write m[0:4] seed=2
        p0 read f[0:1]
        p0 write f[1:2] seed=3
        p0 clear_soft_dirty
        p0 snapshot d s[0:2]
        p0 pagemap s[0:2]
        p0 madvise s[1:2] dontneed
        p0 read s[1:2]
        p0 write s[0:1] seed=4
        p0 snapshot d s[0:2]
        p0 mprotect s[0:2] r
        p0 mprotect s[0:2] rw
        p0 snapshot d s[0:2]
        p0 pagemap s[0:2]
        p0 dev_write d m[0:2] seed=5
        p0 snapshot d m[0:4]
        p0 map m[4:8] memfd
        p0 madvise m[0:8] dontneed
        p0 read m[0:8]
        p0 snapshot d m[0:8]
        p0 pagemap m[0:8]
        p0 fork p1
        p1 read m[0:2]
        p1 write f[0:2] seed=6
        p0 read f[0:2]
        p0 snapshot d f[0:2]
        p0 pagemap f[0:2]
    """)


@pytest.mark.parametrize("kind, op", [("file", "mbind s[0:2] 1")])
def test_ops_not_followed_on_shmem_mappings_stop_the_check_there(each_kernel, kind, op):
    program, _, verdict = agrees(each_kernel, f"""
        region s pages=2
        p0 map s[0:2] {kind}
        p0 write s[0:2] seed=1
        p0 {op}
        p0 read s[0:2]
    """, fully_modelled=False)
    assert verdict.unmodelled_from == 2, verdict.unmodelled
