"""mremap on the real kernel (7.2), judged by the model: resize in place, moves with
MREMAP_FIXED (one VMA or several, gaps kept) and MREMAP_DONTUNMAP, PTEs of every kind
carried along (present, zero page, device-exclusive, device-private), the mirror of the old
range invalidated, merges at the destination, and the errno cases. Older kernels: refused."""

from __future__ import annotations

import errno

import pytest

from test_vm_model_support import agrees

pytestmark = pytest.mark.vm


def test_resize_in_place_and_moves_carry_every_kind_of_entry(kernel_session):
    _, trace, _ = agrees(kernel_session, """
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


def test_moves_keep_vm_pgoff_and_so_decide_later_merges(kernel_session):
    agrees(kernel_session, """
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


@pytest.mark.parametrize("release", ["6.12", "6.1"])
def test_mremap_is_refused_on_older_kernels(release, tmp_path):
    from harness.kernel import resolve_kernel
    from harness.vm.session import KernelSession

    with KernelSession(resolve_kernel(release), tmp_path) as session:
        _, _, verdict = agrees(session, """
            region a pages=4
            p0 map a[0:2]
            p0 write a[0:2] seed=1
            p0 mremap a[0:2] 4
            p0 read a[0:4]
        """, fully_modelled=False)
    assert verdict.unmodelled_op == "mremap on kernels before 7.2"
    assert verdict.checked == 2
