"""The `smaps` op on the real kernels (7.2, 6.12, 6.1), judged by the model: Rss, Pss,
Anonymous, Swap, SwapPss and Locked per VMA over written, zero, shared, swapped,
device-private and device-exclusive pages."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_smaps_counts_what_each_vma_maps(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=12
        region b pages=4
        p0 map a[0:12]
        p0 write a[0:8] seed=1
        p0 read a[8:10]
        p0 mprotect a[10:12] r
        p0 mlock a[6:8]
        p0 smaps a[0:12]
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[1:2]
        p0 exclusive d0 a[2:3]
        p0 madvise a[3:5] pageout
        p0 smaps a[0:12]
        p0 fork p1
        p0 fork p2
        p1 write a[5:6] seed=2
        p0 smaps a[0:6]
        p1 smaps a[0:6]
        p2 smaps a[0:6]
        p0 map b[0:4]
        p0 write b[0:4] seed=3
        p0 madvise b[1:2] free
        p0 madvise b[1:2] pageout
        p0 smaps b[0:4]
        p0 exit
        p1 smaps a[0:12]
    """)
    first = trace.results[5].smaps
    assert [vma["Rss"] for vma in first] == [24, 8, 0, 0]   # a[0:6], a[6:8] locked, a[8:10], a[10:12] r
    assert first[1]["Locked"] == 8


def test_smaps_of_a_range_without_vmas(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=4
        p0 smaps a[0:4]
        p0 map a[1:2]
        p0 smaps a[0:4]
    """)
    assert trace.results[0].smaps == ()


def test_smaps_of_shmem_and_file_mappings(each_kernel):
    # page-cache folios count in Rss but not Anonymous, shared by mapcount; the object's
    # swapped pages in Swap (shmem_swap_usage), never in SwapPss; a private file mapping's
    # copies are anonymous
    _, trace, _ = agrees(each_kernel, """
        region s pages=8
        region f pages=8
        region w pages=4
        p0 map s[0:8] memfd
        p0 write s[0:3] seed=1
        p0 read s[4:5]
        p0 fork p1
        p1 read s[0:2]
        p0 smaps s[0:8]
        p1 smaps s[0:8]
        p0 map f[0:8] file
        p0 read f[0:2]
        p0 write f[2:4] seed=2
        p0 mlock f[3:8]
        p0 smaps f[0:8]
        p0 map w[0:4] shared
        p0 write w[0:4] seed=3
        p0 madvise w[0:2] pageout
        p0 smaps w[0:4]
        p0 munmap w[3:4]
        p0 smaps w[0:4]
        p1 map w[0:4] memfd
        p1 write w[0:2] seed=4
        p1 madvise w[0:1] pageout
        p1 read w[2:3]
        p1 smaps w[0:4]
        p1 munmap w[0:1]
        p1 smaps w[0:4]
    """)
    (parent,) = trace.results[5].smaps
    assert parent["Anonymous"] == 0 and parent["Rss"] == 16 and parent["Pss"] < 16
    (swapped,) = trace.results[15].smaps
    assert (swapped["Swap"], swapped["SwapPss"], swapped["Rss"]) == (8, 0, 8)


def _fields(trace, index):
    return dict(trace.results[index].smaps[0].fields)


def test_smaps_of_thps_and_device_thps(kernel_session):
    """7.2: a PMD-mapped THP counts in AnonHugePages, private or shared by its page
    mapcounts; a device THP's PMD is not present, so smaps_account counts it shared (a
    device-private PTE is "fake-present", private); a split PMD counts page by page."""
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 smaps a[0:1]
        p0 fork p1
        p1 smaps a[0:1]
        p1 exit
        p0 smaps a[0:1]
        p0 map b[0:1024]
        p0 madvise b[0:512] hugepage
        p0 read b[0:2]
        p0 smaps b[0:1]
        p0 write b[0:1] seed=2
        p0 migrate_to_dev d0 b[0:512]
        p0 smaps b[0:1]
        p0 munmap b[100:101]
        p0 smaps b[0:1]
        p0 mlock a[0:512]
        p0 munmap a[300:301]
        p0 smaps a[0:1]
    """)
    assert _fields(trace, 5)["AnonHugePages"] == 2048
    assert _fields(trace, 7)["Pss"] == 1024 and _fields(trace, 7)["Shared_Dirty"] == 2048
    assert _fields(trace, 13)["Rss"] == 0          # the huge zero PMD
    device_thp = _fields(trace, 16)
    assert device_thp["AnonHugePages"] == 2048
    assert device_thp["Shared_Clean"] + device_thp["Shared_Dirty"] == 2048
    split = _fields(trace, 18)
    assert split["Private_Clean"] + split["Private_Dirty"] == 400 and split["AnonHugePages"] == 0
    assert _fields(trace, 21)["Locked"] == 1200 and _fields(trace, 21)["AnonHugePages"] == 0
