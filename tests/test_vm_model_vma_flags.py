"""The VMA-flag advice (dontfork/dofork, wipeonfork/keeponfork, mergeable/unmergeable,
hugepage/nohugepage) and mlock/munlock on the real kernels (7.2, 6.12, 6.1), judged by the
model: their effect at fork, the splits and merges they cause (with the 2 MiB invalidation
of split_huge_pmd_if_needed), population on mlock and the advice refused on locked VMAs."""

from __future__ import annotations

import errno
import signal

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_fork_advice_and_the_splits_they_make(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region w pages=4
        region d pages=4
        region h pages=600
        p0 map w[0:4]
        p0 map d[0:4]
        p0 write w[0:4] seed=1
        p0 write d[0:4] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 w[0:4]
        p0 dev_read d0 d[0:4]
        p0 madvise w[1:3] wipeonfork
        p0 madvise d[0:2] dontfork
        p0 dev_read d0 w[0:4]
        p0 fork p1
        p0 dev_write d0 w[0:4] seed=2
        p0 dev_write d0 d[0:4] seed=2
        p1 read w[0:4]
        p1 read d[0:4]
        p1 pagemap w[0:4]
        p1 write w[1:2] seed=5
        p0 madvise w[0:4] keeponfork
        p0 madvise d[0:4] dofork
        p0 fork p2
        p2 read w[0:4]
        p2 read d[0:4]
        p0 map h[0:600]
        p0 write h[0:600] seed=3
        p0 dev_read d0 h[0:600]
        p0 madvise h[100:101] hugepage
        p0 dev_read d0 h[0:600]
        p0 madvise h[100:101] nohugepage
        p0 madvise h[0:600] mergeable
        p0 dev_read d0 h[0:600]
        p0 madvise h[0:600] unmergeable
        p0 madvise h[50:600] hugepage
        p0 dev_read d0 h[0:600]
    """)
    child_d = trace.results[14].pages
    assert [p.signal for p in child_d] == [signal.SIGSEGV] * 2 + [0] * 2  # not copied
    assert trace.results[26].faults == 1   # the split at h[100] emptied its 2 MiB


def test_mlock_populates_and_locked_vmas_refuse_reclaim_advice(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=10
        region b pages=600
        p0 map a[0:8]
        p0 write a[0:2] seed=1
        p0 read a[2:4]
        p0 fork p1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:8]
        p0 mlock a[0:6]
        p0 snapshot d0 a[0:8]
        p0 pagemap a[0:8]
        p0 dev_read d0 a[0:8]
        p0 madvise a[0:8] pageout
        p0 madvise a[6:8] pageout
        p0 madvise a[0:2] dontneed
        p0 madvise a[0:8] cold
        p0 mprotect a[0:8] r
        p0 mprotect a[0:8] rw
        p0 snapshot d0 a[0:8]
        p0 munlock a[2:4]
        p0 pagemap a[0:8]
        p0 mprotect a[4:5] none
        p0 mlock a[3:6]
        p0 munlock a[0:8]
        p0 madvise a[0:8] pageout
        p0 pagemap a[0:8]
        p0 mlock a[6:10]
        p0 map b[0:600]
        p0 write b[0:600] seed=2
        p0 dev_read d0 b[0:600]
        p0 mlock b[10:20]
        p0 dev_read d0 b[0:600]
        p1 mlock a[0:8]
        p1 pagemap a[0:8]
    """)
    errnos = [r.errno for r in trace.results]
    assert errnos[10] == errno.EINVAL          # pageout over a locked VMA
    assert errnos[20] == errno.ENOMEM          # populate meets the PROT_NONE page
    assert errnos[24] == errno.ENOMEM          # a[8:10] is not mapped
    assert all(e.present for e in trace.results[8].pagemap)   # mlock populated


def test_populate_stops_where_it_cannot_fault(each_kernel):
    # 7.2/6.12: page by page, the first hole is -ENOMEM and a VMA without the access is
    # -EINVAL, the pages before it populated; 6.1 walks the VMAs past holes first
    agrees(each_kernel, """
        region a pages=8
        region b pages=4
        p0 map a[0:2]
        p0 map a[3:8]
        p0 mprotect a[5:6] r
        p0 madvise a[0:8] populate_read
        p0 pagemap a[0:8]
        p0 madvise a[0:8] populate_write
        p0 pagemap a[0:8]
        p0 munmap a[0:8]
        p0 map a[0:3]
        p0 mprotect a[1:2] none
        p0 madvise a[0:4] populate_read
        p0 pagemap a[0:4]
        p0 madvise b[0:4] populate_write
        p0 map b[1:3]
        p0 madvise b[0:4] populate_write
        p0 pagemap b[0:4]
    """)


def test_a_read_only_vma_without_anon_vma_keeps_vm_account_on_6_1_only(each_kernel):
    # profile.mprotect_unaccounts_read_only: 6.12 and 7.2 mprotect_fixup drop VM_ACCOUNT of
    # an anonymous VMA without anon_vma made read-only; 6.1 keeps it, so the read-only
    # middle VMA shares the first VMA's anon_vma when a migration faults it in, and the
    # three merge once all is read-write again (the last VMA, without anon_vma, does not
    # on 6.x: profile.merge_into_vma_without_anon)
    _, trace, _ = agrees(each_kernel, """
        region a pages=16
        p0 map a[0:16]
        p0 open d0 dmirror0
        p0 mprotect a[1:13] r
        p0 migrate_to_dev d0 a[0:2]
        p0 mprotect a[0:16] rw
        p0 smaps a[0:16]
    """)
    vmas = [(vma.start, vma.end) for vma in trace.results[5].smaps]
    base = vmas[0][0]
    pages = [((start - base) >> 12, (end - base) >> 12) for start, end in vmas]
    if trace.kernel_release.startswith("6.1."):
        assert pages == [(0, 13), (13, 16)]
    elif trace.kernel_release.startswith("6.12."):
        assert pages == [(0, 1), (1, 13), (13, 16)]
    else:
        assert pages[0] == (0, 1)
