"""madvise pageout, cold, free and willneed and the swap-in fault on the real kernels (7.2,
6.12, 6.1), judged by the model: reclaim into the runner's zram swap, what the device mirror
sees, and the kernels' differences in how a page comes back (profile.py)."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_pageout_swaps_exclusive_pages_and_the_device_faults_them_back(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=8
        p0 map a[0:8]
        p0 write a[0:6] seed=1
        p0 read a[6:7]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:8]
        p0 pagemap a[0:8]
        p0 madvise a[0:8] pageout
        p0 pagemap a[0:8]
        p0 snapshot d0 a[0:8]
        p0 dev_read d0 a[0:4]
        p0 snapshot d0 a[0:8]
        p0 pagemap a[0:8]
        p0 dev_write d0 a[0:4] seed=2
        p0 read a[4:5]
        p0 snapshot d0 a[0:8]
        p0 madvise a[0:8] cold
        p0 dev_read d0 a[0:8]
    """)
    after = trace.results[7].pagemap
    assert all(e.swapped and not e.present for e in after[:6])   # really in swap
    assert after[6].present                                        # the zero page stays


def test_free_then_pageout_discards_clean_pages_and_keeps_redirtied_ones(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 madvise a[0:4] free
        p0 write a[1:2] seed=3
        p0 open d0 dmirror0
        p0 dev_write d0 a[2:3] seed=5
        p0 madvise a[0:4] pageout
        p0 pagemap a[0:4]
        p0 read a[0:4]
        p0 madvise a[0:4] pageout
        p0 pagemap a[0:4]
        p0 read a[0:4]
    """)
    kept = trace.results[7].pagemap
    assert [e.present for e in kept] == [False, True, False, False]


def test_non_exclusive_pages_after_fork_swap_out_and_back(each_kernel):
    agrees(each_kernel, """
        region a pages=6
        p0 map a[0:6]
        p0 write a[0:6] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 madvise a[0:6] pageout
        p0 pagemap a[0:6]
        p1 exit
        p0 madvise a[0:6] pageout
        p0 pagemap a[0:6]
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:6]
        p0 read a[0:2]
        p0 snapshot d0 a[0:6]
        p0 pagemap a[0:6]
        p0 write a[0:1] seed=4
        p0 madvise a[2:3] willneed
        p0 read a[2:3]
        p0 snapshot d0 a[0:6]
        p0 mprotect a[0:6] r
        p0 mprotect a[0:6] rw
        p0 snapshot d0 a[0:6]
        p0 exclusive d0 a[3:5]
        p0 read a[0:6]
        p0 migrate_to_dev d0 a[4:6]
    """)


def test_swap_entries_survive_fork_dontneed_and_free(each_kernel):
    agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 madvise a[0:4] pageout
        p0 fork p1
        p1 pagemap a[0:4]
        p0 pagemap a[0:4]
        p1 madvise a[0:1] dontneed
        p1 madvise a[1:2] free
        p1 exit
        p0 madvise a[3:4] free
        p0 read a[0:4]
        p0 pagemap a[0:4]
    """)


def test_a_swap_entry_shared_after_fork_is_swapped_in_through_one_swap_cache_folio(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=8
        p0 map a[0:8]
        p0 write a[0:8] seed=1
        p0 madvise a[0:8] pageout
        p0 fork p1
        p1 fork p2
        p0 open d0 dmirror0
        p1 read a[0:4]
        p1 pagemap a[0:8]
        p0 read a[0:2]
        p0 dev_read d0 a[0:8]
        p0 pagemap a[0:8]
        p0 snapshot d0 a[0:8]
        p0 write a[0:1] seed=2
        p0 dev_read d0 a[0:2]
        p1 write a[1:2] seed=3
        p1 madvise a[2:3] free
        p1 madvise a[2:4] pageout
        p1 pagemap a[0:4]
        p2 read a[0:8]
        p2 pagemap a[0:8]
        p1 exit
        p0 write a[2:4] seed=4
        p0 madvise a[4:5] willneed
        p2 write a[4:6] seed=5
        p0 read a[4:8]
        p0 pagemap a[0:8]
        p2 exit
        p0 write a[5:8] seed=6
        p0 pagemap a[0:8]
        p0 compact
        p0 pagemap a[0:8]
    """)
    theirs, ours = trace.results[7].pagemap, trace.results[10].pagemap
    # p0 swapped in the swap-cache folio p1 had swapped in: one page mapped twice
    assert ours[0].pfn == theirs[0].pfn and ours[0].count == 2
    assert not ours[0].flags & (1 << 34)      # KPF_OWNER_2: not PageAnonExclusive
