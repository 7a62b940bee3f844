"""mremap on the real kernels (7.2, 6.12, 6.1), judged by the model: resize in place, moves
with MREMAP_FIXED (one VMA or several, gaps kept, on 6.x one VMA only) and MREMAP_DONTUNMAP,
PTEs of every kind carried along (present, zero page, device-exclusive, device-private), the
mirror of the old range invalidated, merges at the destination, and the errno cases."""

from __future__ import annotations

import errno

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_resize_in_place_and_moves_carry_every_kind_of_entry(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=8
        region b pages=8
        region c pages=600
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p0 mremap a[0:4] 6
        p0 dev_read d0 a[0:6]
        p0 pagemap a[0:6]
        p0 mremap a[0:2] b[2:4]
        p0 read a[0:1]
        p0 read b[2:4]
        p0 pagemap b[0:5]
        p0 snapshot d0 b[0:5]
        p0 dev_read d0 a[2:6]
        p0 mremap b[2:4] a[0:2] dontunmap
        p0 read b[2:4]
        p0 read a[0:2]
        p0 mremap a[0:2] a[1:3]
        p0 mremap a[0:6] 3
        p0 read a[0:6]
        p0 mremap b[6:7] 2
        p0 map b[6:7]
        p0 mremap b[6:7] 2
        p0 write b[6:7] seed=2
        p0 map b[7:8]
        p0 mremap b[6:7] 2
        p0 fork p1
        p1 read b[0:8]
        p0 map c[0:600]
        p0 write c[0:600] seed=3
        p0 dev_read d0 c[0:600]
        p0 exclusive d0 c[10:12]
        p0 migrate_to_dev d0 c[12:14]
        p0 mremap c[8:16] a[0:8]
        p0 pagemap a[0:8]
        p0 dev_read d0 c[0:600]
        p0 read a[0:8]
        p0 mremap c[0:8] b[0:4]
        p0 read b[0:4]
        p0 mremap a[0:8] b[0:8]
    """)
    errnos = [r.errno for r in trace.results]
    assert errnos[16] == errno.EINVAL    # the target overlaps the source
    assert errnos[19] == errno.EFAULT    # no VMA at the address
    assert errnos[24] == errno.ENOMEM    # cannot grow in place, may not move
    moved = trace.results[33].pagemap
    assert moved[2].swapped and moved[4].swapped   # device-exclusive, device-private


def test_moves_keep_vm_pgoff_and_so_decide_later_merges(each_kernel):
    agrees(each_kernel, """
        region a pages=600
        region b pages=600
        region c pages=16
        p0 map a[0:600]
        p0 write a[0:4] seed=1
        p0 mprotect a[8:10] r
        p0 mremap a[0:16] b[0:16]
        p0 pagemap b[0:16]
        p0 read a[0:1]
        p0 map b[16:600]
        p0 write b[16:600] seed=2
        p0 open d0 dmirror0
        p0 dev_read d0 b[0:600]
        p0 mprotect b[300:301] r
        p0 dev_read d0 b[0:600]
        p0 mremap b[0:4] c[0:4]
        p0 map c[4:8]
        p0 write c[4:8] seed=3
        p0 mremap c[0:4] b[0:4]
        p0 dev_read d0 b[0:600]
        p0 mprotect b[200:201] none
        p0 dev_read d0 b[0:200]
        p0 map c[0:4]
        p0 write c[0:4] seed=4
        p0 mremap c[0:4] c[8:12] dontunmap
        p0 read c[0:12]
        p0 fork p1
        p1 read c[0:12]
        p1 mremap c[8:12] 8
        p1 mremap c[8:16] a[100:108]
        p1 read a[100:108]
        p0 mremap c[0:16] a[200:216]
        p0 read a[200:216]
    """)


def test_the_order_of_checks_and_unmaps_on_each_kernel(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=8
        region b pages=8
        region c pages=8
        p0 mremap a[0:2] a[1:3]
        p0 map a[0:2]
        p0 map a[2:4]
        p0 mprotect a[2:4] r
        p0 write a[0:2] seed=1
        p0 map b[0:4]
        p0 write b[0:4] seed=2
        p0 mremap a[0:4] b[0:4]
        p0 read a[0:4]
        p0 read b[0:4]
        p0 map c[0:4]
        p0 mremap a[0:4] c[0:3]
        p0 read a[0:4]
        p0 read c[0:4]
    """)
    errnos = [r.errno for r in trace.results]
    older = not trace.kernel_release.startswith("7.")
    # no VMA and an overlapping target: 6.x looks the VMA up first
    assert errnos[0] == (errno.EFAULT if older else errno.EINVAL)
    # two VMAs: 7.2 moves both, 6.x unmaps the target and fails
    assert errnos[7] == (errno.EFAULT if older else 0)


def test_6_1_keeps_a_copy_beside_its_kept_source_apart(each_kernel):
    # 6.12/7.2 merge the copy a[500:600] of the unfaulted a[600:700] with a[0:500] (the
    # kept source is no candidate), and the VMA then covers a[0:512]: the split at a[100]
    # fires the 2 MiB notifier (mm.split_pmd) and the mirrored a[200] is lost. 6.1 merges
    # nothing: a[0:500] does not cover a[0:512], so the split fires nothing.
    _, trace, _ = agrees(each_kernel, """
        region a pages=1024
        p0 map a[0:500]
        p0 map a[600:700]
        p0 mremap a[600:700] a[500:600] dontunmap
        p0 write a[200:201] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[200:201]
        p0 munmap a[100:101]
        p0 dev_read d0 a[200:201]
    """)
    assert trace.results[7].faults == (0 if trace.kernel_release.startswith("6.1.") else 1)
