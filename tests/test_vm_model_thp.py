"""Transparent huge pages on the real kernel (7.2), judged by the model: the huge zero page
and PMD-mapped THPs from CPU and device faults, what pagemap and kpageflags show of them,
the splits munmap, mprotect and madvise dontneed cause, the PTE tables that keep a fault
small, and the device's view (SNAPSHOT's PMD flag, the notifier of a write to the huge
zero page)."""

from __future__ import annotations

import pytest

from harness.prog.observation import KPF
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm


def test_cpu_faults_map_the_huge_zero_page_and_thps_and_splits_keep_the_folio(
        kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=1536
        p0 thp always madvise
        p0 map a[0:1024]
        p0 read a[0:1]
        p0 pagemap a[0:2]
        p0 pagemap a[510:512]
        p0 write a[512:513] seed=1
        p0 pagemap a[512:515]
        p0 pagemap a[1023:1024]
        p0 read a[512:514]
        p0 write a[3:4] seed=2
        p0 pagemap a[0:4]
        p0 munmap a[700:701]
        p0 pagemap a[698:702]
        p0 read a[698:702]
        p0 mprotect a[0:256] r
        p0 pagemap a[255:258]
        p0 write a[255:258] seed=3
        p0 read a[2:5]
        p0 map b[0:1536]
        p0 madvise b[0:1024] nohugepage
        p0 write b[0:1] seed=4
        p0 write b[1024:1025] seed=5
        p0 pagemap b[0:2]
        p0 madvise b[1024:1030] dontneed
        p0 pagemap b[1023:1032]
        p0 madvise b[1024:1536] dontneed
        p0 write b[1100:1101] seed=7
        p0 pagemap b[1024:1026]
        p0 thp never madvise
        p0 exit
    """)
    huge_zero, thp_head = trace.results[3].pagemap[0], trace.results[6].pagemap[0]
    assert huge_zero.flags & KPF["ZERO_PAGE"] and huge_zero.flags & KPF["THP"]
    assert thp_head.flags & KPF["THP"] and thp_head.flags & KPF["COMPOUND_HEAD"]
    small = trace.results[22].pagemap[0]      # VM_NOHUGEPAGE: an order-0 folio
    assert not small.flags & KPF["THP"]


def test_the_device_sees_thps_through_hmm_range_fault(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1536
        region c pages=513
        p0 thp madvise always
        p0 map a[0:1536]
        p0 madvise a[0:1536] hugepage
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 dev_read d0 a[0:40]
        p0 snapshot d0 a[0:2]
        p0 pagemap a[0:1]
        p0 dev_write d0 a[8:48] seed=1
        p0 dev_read d0 a[0:64]
        p0 snapshot d1 a[510:514]
        p0 read a[0:64]
        p0 write a[600:601] seed=2
        p0 dev_read d1 a[590:610]
        p0 snapshot d1 a[598:602]
        p0 munmap a[1000:1001]
        p0 dev_read d1 a[590:610]
        p0 snapshot d1 a[598:602]
        p0 mprotect a[1024:1536] r
        p0 dev_read d0 a[1024:1100]
        p0 dev_write d0 a[1024:1025] seed=3
        p0 snapshot d0 a[1024:1026]
        p0 map c[0:513]
        p0 madvise c[0:513] hugepage
        p0 write c[512:513] seed=4
        p0 dev_read d0 c[512:513]
        p0 read c[0:1]
        p0 dev_read d0 c[512:513]
        p0 write c[1:2] seed=5
        p0 dev_read d0 c[512:513]
        p0 snapshot d0 c[0:2]
    """)
    # the write to the huge zero page: MMU_NOTIFY_CLEAR over the 2 MiB and the page after
    assert trace.results[29].faults == 1
    assert trace.results[10].snapshot == bytes([0x06, 0x06, 0, 0])   # WRITE|PMD, none


def test_fork_shares_thps_and_cow_splits_the_pmd(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        region c pages=16
        p0 thp always defer
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 read a[512:513]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p0 fork p1
        p0 pagemap a[0:2]
        p0 snapshot d0 a[0:2]
        p1 pagemap a[512:514]
        p1 write a[1:2] seed=2
        p1 pagemap a[0:3]
        p0 pagemap a[0:3]
        p1 write a[512:513] seed=3
        p1 pagemap a[512:514]
        p0 pagemap a[512:514]
        p0 write a[2:3] seed=4
        p0 dev_read d0 a[0:4]
        p1 exit
        p0 pagemap a[0:4]
        p0 map b[0:1024]
        p0 write b[0:1] seed=5
        p0 fork p2
        p2 exit
        p0 write b[1:2] seed=6
        p0 pagemap b[0:2]
        p0 map c[0:16]
        p0 write c[0:4] seed=7
        p0 mremap c[0:4] b[900:904]
        p0 pagemap b[898:906]
        p0 read b[900:904]
    """)
    shared = trace.results[7].pagemap[0]
    assert shared.count == 2 and not shared.flags & (1 << 34)


def test_make_device_exclusive_splits_the_pmd_of_a_thp(kernel_session):
    """GUP with FOLL_SPLIT_PMD: the write fault maps a THP (or the huge zero page is split
    and one page copied), follow_pmd_mask splits the PMD, the page becomes a device-exclusive
    entry whose offset is the THP's PFN plus its index; a CPU access restores it."""
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 open d0 dmirror0
        p0 dev_read d0 a[512:513]
        p0 exclusive d0 a[0:2]
        p0 pagemap a[0:3]
        p0 snapshot d0 a[0:3]
        p0 exclusive d0 a[600:601]
        p0 snapshot d0 a[599:602]
        p0 dev_read d0 a[512:513]
        p0 read a[0:1]
        p0 check_exclusive d0 a[0:2]
        p0 pagemap a[0:2]
        p0 write a[1:3] seed=1
        p0 fork p1
        p1 exclusive d0 a[3:4]
        p0 pagemap a[2:5]
    """)
    assert trace.results[9].faults == 1     # the huge zero page's split erased a[512]


def test_clear_soft_dirty_and_move_pages_queries_on_thps(kernel_session):
    """clear_soft_dirty_pmd write-protects the PMD and clears its soft-dirty bit; the next
    write reuses the folio (PageAnonExclusive) and sets the bit on the whole PMD;
    move_pages without nodes reports a THP page's node and -EFAULT for the huge zero
    page (is_huge_zero_folio)."""
    agrees(kernel_session, """
        region a pages=1536
        p0 thp always never
        p0 map a[0:1536]
        p0 write a[0:1] seed=1
        p0 read a[512:513]
        p0 write a[1024:1025] seed=2
        p0 munmap a[1500:1501]
        p0 clear_soft_dirty
        p0 pagemap a[0:2]
        p0 pagemap a[511:514]
        p0 pagemap a[1024:1026]
        p0 write a[1:2] seed=3
        p0 write a[1025:1026] seed=4
        p0 pagemap a[0:2]
        p0 pagemap a[1024:1027]
        p0 move_pages a[0:2]
        p0 move_pages a[511:514]
        p0 mprotect a[0:512] r
        p0 mprotect a[0:512] rw
        p0 pagemap a[0:1]
    """)


def test_an_empty_aligned_piece_with_a_pte_table_migrates_page_by_page(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] dontneed
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:512]
        p0 snapshot d0 a[0:2]
        p0 pagemap a[0:2]
    """)
    assert trace.results[4].cpages == 512


def test_willneed_leaves_a_thp_alone(kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 read a[512:513]
        p0 madvise a[0:1024] willneed
        p0 pagemap a[0:2]
        p0 pagemap a[512:513]
    """)
