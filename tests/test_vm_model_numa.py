"""move_pages and mbind on the real kernels (7.2, 6.12, 6.1; two NUMA nodes, the runner on
node 0), judged by the model: the status of every page, what migration does to the device
mirror, and where the VMA's policy makes later allocations land."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_move_pages_reports_each_page_and_moves_those_mapped_once(each_kernel):
    agrees(each_kernel, """
        region a pages=16
        region b pages=4
        p0 map a[0:16]
        p0 write a[0:8] seed=1
        p0 read a[8:10]
        p0 move_pages a[0:16]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:12]
        p0 move_pages a[0:4] 1
        p0 move_pages a[0:16]
        p0 dev_read d0 a[0:12]
        p0 move_pages a[2:6] 1
        p0 move_pages a[2:6] 0
        p0 move_pages a[0:4] 2
        p0 migrate_to_dev d0 a[6:8]
        p0 exclusive d0 a[4:6]
        p0 move_pages a[0:16] 1
        p0 pagemap a[0:8]
        p0 fork p1
        p0 move_pages a[0:8] 0
        p0 mprotect a[0:4] none
        p0 move_pages a[0:8]
        p0 move_pages a[0:8] 1
        p1 exit
        p0 move_pages b[0:4] 1
        p0 read a[6:8]
        p0 dev_read d0 a[4:12]
    """)


def test_unfaulted_and_prot_none_pages(each_kernel):
    agrees(each_kernel, """
        region a pages=8
        p0 map a[0:8]
        p0 mprotect a[0:4] none
        p0 move_pages a[0:8]
        p0 move_pages a[0:8] 1
        p0 mprotect a[0:4] rw
        p0 read a[0:2]
        p0 write a[2:4] seed=1
        p0 mprotect a[0:4] none
        p0 move_pages a[0:8]
        p0 move_pages a[0:8] 1
        p0 mbind a[0:8] 1
        p0 mprotect a[0:4] r
        p0 move_pages a[0:8]
    """)


def test_mbind_splits_the_vma_moves_pages_and_places_later_allocations(each_kernel):
    agrees(each_kernel, """
        region a pages=1024
        region b pages=8
        p0 map a[0:1024]
        p0 write a[0:600] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[500:530]
        p0 mbind a[505:510] 1
        p0 dev_read d0 a[500:530]
        p0 move_pages a[500:512]
        p0 migrate_to_dev d0 a[520:524]
        p0 mbind a[518:526] 1
        p0 read a[520:522]
        p0 migrate_to_sys d0 a[518:526]
        p0 move_pages a[518:526]
        p0 mbind b[0:4] 1
        p0 mbind a[0:4] 2
    """)


def test_the_policy_decides_swap_in_copy_on_write_and_lazyfree_pages(each_kernel):
    agrees(each_kernel, """
        region c pages=8
        p0 map c[0:8]
        p0 write c[0:8] seed=3
        p0 madvise c[0:4] pageout
        p0 move_pages c[0:8]
        p0 mbind c[0:8] 1
        p0 madvise c[0:2] willneed
        p0 read c[0:4]
        p0 move_pages c[0:8]
        p0 move_pages c[0:8] 0
        p0 madvise c[6:8] free
        p0 move_pages c[6:8] 1
        p0 madvise c[6:8] pageout
        p0 read c[6:8]
        p0 fork p1
        p1 write c[0:2] seed=4
        p1 move_pages c[0:4]
        p0 mbind c[0:4] 0
        p0 move_pages c[0:4]
        p0 write c[2:4] seed=5
        p0 move_pages c[0:4]
        p0 munmap c[0:1]
        p0 mbind c[1:2] 0
        p0 move_pages c[0:4]
    """)
