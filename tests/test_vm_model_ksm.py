"""KSM on the real kernels, judged by the model (reference/ksm.py): which pages ksmd merges,
what a merged page looks like in pagemap and to the mirror, and what breaks the sharing
(a CPU or device write, madvise unmergeable, mremap)."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_identical_pages_merge_and_a_write_breaks_the_sharing(each_kernel):
    # p1's copy of a[i] holds the bytes p0's a[i] holds, z is zero-filled, c holds contents
    # no other page has; the mirrored pages lose their entries
    program, trace, _ = agrees(each_kernel, """
        region a pages=4
        region z pages=8
        region c pages=2
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 madvise a[0:4] mergeable
        p0 fork p1
        p1 write a[0:4] seed=1
        p0 map z[0:8]
        p0 madvise z[0:8] populate_write
        p0 map c[0:2]
        p0 write c[0:2] seed=2
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p0 dev_read d0 c[0:2]
        p0 madvise z[0:8] mergeable
        p0 madvise c[0:2] mergeable
        p0 ksm_merge
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p0 pagemap z[0:8]
        p0 pagemap c[0:2]
        p0 snapshot d0 a[0:4]
        p0 dev_read d0 a[0:4]
        p0 dev_read d0 c[0:2]
        p0 write a[0:1] seed=3
        p0 dev_write d0 a[1:2] seed=4
        p0 pagemap a[0:4]
        p1 pagemap a[0:2]
        p1 read a[0:2]
        p0 ksm_merge
    """)
    # four KSM pages mapped by both processes, one of the eight zero-filled pages
    merged = trace.results[[op.keyword for op in program.ops].index("ksm_merge")].ksm
    assert (merged.pages_shared, merged.pages_sharing) == (4 + 1, 4 + 7)


def test_pages_merge_across_processes_and_a_forked_ksm_page_is_counted(each_kernel):
    agrees(each_kernel, """
        region a pages=4
        p0 map a[0:4]
        p0 madvise a[0:4] mergeable
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 write a[0:2] seed=1
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p0 ksm_merge
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p0 dev_read d0 a[0:4]
        p1 fork p2
        p0 ksm_merge
        p2 pagemap a[0:2]
        p2 write a[0:1] seed=2
        p0 ksm_merge
        p0 pagemap a[0:2]
        p1 exit
        p2 exit
        p0 ksm_merge
        p0 pagemap a[0:2]
    """)


def test_unmergeable_unshares_each_ksm_page_read_only(each_kernel):
    agrees(each_kernel, """
        region a pages=6
        p0 map a[0:6]
        p0 madvise a[0:6] populate_write
        p0 madvise a[0:6] mergeable
        p0 ksm_merge
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:6]
        p0 madvise a[2:4] unmergeable
        p0 pagemap a[0:6]
        p0 snapshot d0 a[0:6]
        p0 dev_read d0 a[0:6]
        p0 write a[2:3] seed=1
        p0 pagemap a[2:4]
        p0 madvise a[0:6] unmergeable
        p0 ksm_merge
        p0 pagemap a[0:6]
        p0 madvise a[0:6] mergeable
        p0 mprotect a[4:6] none
        p0 ksm_merge
        p0 mprotect a[4:6] rw
        p0 pagemap a[0:6]
        p0 exclusive d0 a[5:6]
        p0 pagemap a[4:6]
    """)


def test_nothing_registered_or_only_exited_mms_scan_at_most_once(each_kernel):
    agrees(each_kernel, """
        region a pages=2
        p0 map a[0:2]
        p0 madvise a[0:2] populate_write
        p0 ksm_merge
        p0 fork p1
        p1 madvise a[0:2] mergeable
        p1 exit
        p0 ksm_merge
        p0 pagemap a[0:2]
    """)


def test_mremap_unshares_the_ksm_pages_it_moves(each_kernel):
    # b gets a's pages, a is written again, so a[i] and b[i] hold the same bytes;
    # prep_move_vma breaks the KSM pages of the moved range (6.1: with a write fault)
    agrees(each_kernel, """
        region a pages=4
        region b pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 mremap a[0:4] b[0:4] dontunmap
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 b[0:4]
        p0 madvise a[0:4] mergeable
        p0 madvise b[0:4] mergeable
        p0 ksm_merge
        p0 pagemap a[0:4]
        p0 pagemap b[0:4]
        p0 mremap b[0:2] b[2:4]
        p0 pagemap a[0:4]
        p0 pagemap b[0:4]
        p0 snapshot d0 b[0:4]
        p0 ksm_merge
    """)
