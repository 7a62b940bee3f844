"""clear_soft_dirty on the real kernels (7.2, 6.12, 6.1), judged by the model: VM_SOFTDIRTY and the
PTE bits pagemap shows, the write-protection that makes the next write fault, the
MMU_NOTIFY_SOFT_DIRTY that empties the mirror, the device-private page that escapes the
tracking (docs/findings.md #8); and mremap of mlocked ranges."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_clear_soft_dirty_write_protects_and_the_mirror_starts_over(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=10
        region b pages=4
        p0 map a[0:10]
        p0 write a[0:8] seed=1
        p0 read a[8:9]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:10]
        p0 migrate_to_dev d0 a[2:4]
        p0 exclusive d0 a[4:5]
        p0 madvise a[5:6] pageout
        p0 clear_soft_dirty
        p0 pagemap a[0:10]
        p0 snapshot d0 a[0:10]
        p0 dev_read d0 a[0:2]
        p0 write a[0:1] seed=2
        p0 pagemap a[0:2]
        p0 snapshot d0 a[0:2]
        p0 mprotect a[1:2] r
        p0 mprotect a[1:2] rw
        p0 snapshot d0 a[0:2]
        p0 migrate_to_sys d0 a[2:4]
        p0 snapshot d0 a[2:4]
        p0 write a[2:3] seed=3
        p0 pagemap a[2:4]
        p0 read a[4:6]
        p0 pagemap a[4:6]
        p0 snapshot d0 a[4:6]
        p0 map b[0:2]
        p0 map b[2:4]
        p0 pagemap b[0:4]
        p0 mremap a[6:8] b[0:2]
        p0 pagemap b[0:4]
        p0 fork p1
        p1 pagemap a[0:10]
        p0 clear_soft_dirty
        p0 dev_write d0 a[0:3] seed=4
        p0 pagemap a[0:3]
    """)
    cleared = trace.results[9].pagemap
    assert not any(e.soft_dirty for e in cleared)
    written, untouched = trace.results[13].pagemap
    assert written.soft_dirty and not untouched.soft_dirty
    assert trace.results[11].faults == 1       # MMU_NOTIFY_SOFT_DIRTY emptied the mirror


def test_mremap_of_mlocked_ranges(each_kernel):
    agrees(each_kernel, """
        region a pages=8
        region b pages=8
        region c pages=8
        p0 map a[0:4]
        p0 write a[0:2] seed=1
        p0 mlock a[0:4]
        p0 mremap a[0:4] 6
        p0 pagemap a[0:6]
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:6]
        p0 mremap a[0:2] b[0:2] dontunmap
        p0 pagemap a[0:6]
        p0 pagemap b[0:2]
        p0 madvise a[0:2] pageout
        p0 madvise a[2:4] pageout
        p0 mremap b[0:2] c[0:5]
        p0 pagemap c[0:5]
        p0 mremap c[0:5] a[0:2]
        p0 read a[0:2]
        p0 madvise c[0:1] pageout
        p0 mremap a[2:4] c[0:2]
        p0 fork p1
        p1 pagemap c[0:2]
        p0 madvise c[0:2] pageout
    """)


def test_what_older_kernels_do_differently(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region a pages=2
        region b pages=1
        region c pages=1
        p0 map a[0:1]
        p0 mprotect a[0:1] r
        p0 map b[0:1]
        p0 open d0 dmirror0
        p0 exclusive d0 b[0:1]
        p0 map c[0:1]
        p0 write c[0:1] seed=1
        p0 clear_soft_dirty
        p0 map a[1:2]
        p0 mprotect a[0:1] rw
        p0 pagemap a[0:2]
        p0 read b[0:1]
        p0 pagemap b[0:1]
        p0 snapshot d0 b[0:1]
        p0 move_pages c[0:1] 1
        p0 pagemap c[0:1]
    """)
    release = trace.kernel_release
    merged, restored, migrated = (trace.results[i].pagemap for i in (10, 12, 15))
    # the merge keeps VM_SOFTDIRTY only on 7.2 (VMA_STICKY_FLAGS)
    assert [e.soft_dirty for e in merged] == [release.startswith("7.")] * 2
    # 6.x restore_exclusive_pte: pte_mkdirty for the writable entry
    assert restored[0].soft_dirty == (not release.startswith("7."))
    # 6.1 remove_migration_pte: pte_mkdirty after the entry's soft-dirty bit
    assert migrated[0].soft_dirty == release.startswith("6.1.")


def test_mprotect_of_a_pte_mapped_thp_marks_its_batch_soft_dirty_on_7_2(each_kernel):
    """docs/findings.md #22: 7.2's change_pte_range collects the dirty bits of a batch of
    PTEs of one large folio with pte_mkdirty, which sets soft-dirty on x86, and writes the
    result to every PTE of the batch. The model refuses that mprotect; the kernel's answer
    is pinned here so that a fix shows."""
    _, trace, verdict = agrees(each_kernel, """
        region a pages=1024
        p0 thp always never
        p0 map a[0:1024]
        p0 write a[0:512] seed=3
        p0 munmap a[7:10]
        p0 clear_soft_dirty
        p0 pagemap a[0:7]
        p0 mprotect a[0:1024] r
        p0 pagemap a[0:7]
    """, fully_modelled=False)
    before, after = trace.results[5].pagemap, trace.results[7].pagemap
    assert not any(entry.soft_dirty for entry in before)
    if trace.kernel_release.startswith("7."):
        # a PTE-mapped THP (the munmap split its PMD), every page dirty since the write
        assert all(entry.soft_dirty for entry in after)
        assert verdict.unmodelled_op == \
            "mprotect of a PTE-mapped THP whose soft-dirty bits are clear"
    else:
        # change_pte_range goes PTE by PTE (ptep_modify_prot_start/commit): no bit set
        assert not any(entry.soft_dirty for entry in after)
