"""Device THPs on the real kernel (7.2), judged by the model: a whole aligned 2 MiB (a THP,
the huge zero PMD, an empty PMD) migrates as one device-private PMD; SNAPSHOT, pagemap and
another device's faults see it; it comes back whole (CPU fault, migrate_to_sys, eviction
at RELEASE and close) or in small pages (FAIL_ALLOC); a partial piece splits the THP, a
partial munmap splits the device PMD, and a fault on one of its pages splits the device
folio."""

from __future__ import annotations

import pytest

from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

LOCAL_WRITE_PMD = 0x26       # HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | _WRITE | _PMD
ERROR = 0xFF                 # HMM_DMIRROR_PROT_ERROR


def test_a_thp_and_an_empty_pmd_become_device_thps_and_come_back_whole(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        region c pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 pagemap a[0:2]
        p0 migrate_to_dev d0 a[0:512]
        p0 snapshot d0 a[0:2]
        p0 snapshot d1 a[0:2]
        p0 pagemap a[0:2]
        p0 migrate_to_sys d0 a[0:512]
        p0 pagemap a[0:2]
        p0 snapshot d0 a[0:2]
        p0 map b[0:512]
        p0 migrate_to_dev d0 b[0:512]
        p0 snapshot d0 b[510:512]
        p0 pagemap b[0:2]
        p0 read b[0:2]
        p0 pagemap b[0:2]
        p0 snapshot d0 b[0:1]
        p0 map c[0:512]
        p0 flags d0 1
        p0 migrate_to_dev d0 c[0:512]
        p0 snapshot d0 c[0:2]
        p0 pagemap c[0:2]
    """)
    assert trace.results[8].snapshot == bytes([LOCAL_WRITE_PMD] * 2)
    assert trace.results[9].snapshot == bytes([ERROR] * 2)
    assert trace.results[11].cpages == 1      # only src[0] of a compound migration is valid
    assert trace.results[24].snapshot == bytes([0x22] * 2)    # FAIL_ALLOC: small pages


def test_the_huge_zero_pmd_migrates_and_other_devices_fault_the_thp_back(kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 read a[0:1]
        p0 dev_read d1 a[0:4]
        p0 migrate_to_dev d0 a[0:512]
        p0 dev_read d1 a[510:514]
        p0 snapshot d0 a[0:2]
        p0 write a[3:4] seed=2
        p0 pagemap a[0:4]
        p0 snapshot d0 a[0:4]
        p0 map b[0:512]
        p0 madvise b[0:512] hugepage
        p0 write b[0:512] seed=3
        p0 migrate_to_dev d0 b[0:512]
        p0 snapshot d0 b[0:1]
        p0 flags d0 1
        p0 migrate_to_sys d0 b[0:512]
        p0 pagemap b[0:2]
        p0 read b[100:101]
        p0 snapshot d1 b[0:2]
    """)


def test_partial_pieces_and_partial_unmaps_split_the_folio(kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 dev_read d1 a[0:4]
        p0 migrate_to_dev d0 a[100:200]
        p0 pagemap a[99:101]
        p0 dev_read d1 a[0:4]
        p0 snapshot d0 a[99:101]
        p0 map b[0:1024]
        p0 madvise b[0:512] hugepage
        p0 write b[0:512] seed=2
        p0 migrate_to_dev d0 b[0:512]
        p0 munmap b[128:384]
        p0 pagemap b[127:129]
        p0 snapshot d0 b[126:128]
        p0 read b[10:11]
        p0 pagemap b[9:12]
        p0 snapshot d0 b[9:12]
        p0 read b[400:402]
        p0 migrate_to_sys d0 b[0:128]
        p0 release d0
        p0 pagemap b[0:2]
    """)


def test_release_close_and_exit_evict_device_thps(kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 map a[0:1024]
        p0 write a[0:2] seed=1
        p0 mprotect a[512:1024] r
        p0 migrate_to_dev d0 a[512:1024]
        p0 snapshot d0 a[512:514]
        p0 pagemap a[512:514]
        p0 dev_read d1 a[1000:1001]
        p0 pagemap a[1000:1001]
        p0 map b[0:512]
        p0 migrate_to_dev d0 b[0:512]
        p0 dev_read d1 b[500:504]
        p0 release d0
        p0 pagemap b[0:2]
        p0 snapshot d1 b[0:2]
        p0 migrate_to_dev d0 b[0:512]
        p0 write b[7:8] seed=4
        p0 pagemap b[6:8]
        p0 migrate_to_dev d0 b[0:512]
        p0 close d0
        p0 pagemap b[0:2]
        p0 exit
    """)


def test_mprotect_fork_and_dontneed_of_device_thps(kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 map a[0:1024]
        p0 migrate_to_dev d0 a[0:512]
        p0 mprotect a[0:512] r
        p0 pagemap a[0:2]
        p0 snapshot d0 a[0:2]
        p0 mprotect a[0:512] rw
        p0 snapshot d0 a[0:2]
        p0 write a[5:6] seed=1
        p0 pagemap a[4:7]
        p0 snapshot d0 a[4:6]
        p0 migrate_to_dev d0 a[0:512]
        p0 mprotect a[100:200] r
        p0 snapshot d0 a[99:101]
        p0 pagemap a[99:101]
        p0 dev_read d1 a[150:152]
        p0 snapshot d0 a[148:152]
        p0 map b[0:512]
        p0 migrate_to_dev d0 b[0:512]
        p0 fork p1
        p0 snapshot d0 b[0:2]
        p0 pagemap b[0:2]
        p1 pagemap b[0:2]
        p1 munmap b[0:512]
        p0 pagemap b[0:2]
        p0 madvise b[0:10] dontneed
        p0 pagemap b[9:11]
        p0 madvise b[0:512] dontneed
        p0 pagemap b[9:11]
        p1 exit
        p0 exit
    """)


def test_a_pte_table_splits_the_thp_and_eviction_keeps_a_split_device_thp_large(
        kernel_session):
    agrees(kernel_session, """
        region a pages=1024
        region b pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 madvise a[0:10] dontneed
        p0 dev_read d1 a[500:514]
        p0 migrate_to_dev d0 a[0:512]
        p0 dev_read d1 a[500:514]
        p0 snapshot d0 a[9:11]
        p0 pagemap a[9:11]
        p0 map b[0:1024]
        p0 madvise b[0:512] hugepage
        p0 write b[0:512] seed=2
        p0 migrate_to_dev d0 b[0:512]
        p0 munmap b[100:200]
        p0 dev_read d1 b[500:514]
        p0 release d0
        p0 pagemap b[0:2]
        p0 pagemap b[300:302]
        p0 snapshot d0 b[0:2]
        p0 dev_read d1 b[500:514]
        p0 read b[0:100]
        p0 read b[200:512]
        p0 exit
    """)


def test_madvise_free_cold_and_pageout_leave_a_device_thp_alone(kernel_session):
    """hmm-tests.c migrate_anon_huge_free, then looked at: the device-private PMD is not
    present, so the walks leave it before any split (whole or partial range), and the THP
    comes back whole with its content."""
    _, trace, _ = agrees(kernel_session, """
        region a pages=1024
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 migrate_to_dev d0 a[0:512]
        p0 madvise a[100:200] free
        p0 snapshot d0 a[99:101]
        p0 madvise a[0:512] cold
        p0 madvise a[0:512] pageout
        p0 madvise a[0:512] free
        p0 snapshot d0 a[0:2]
        p0 read a[0:512]
        p0 pagemap a[0:2]
    """)
    assert trace.results[7].snapshot == bytes([LOCAL_WRITE_PMD] * 2)
    assert trace.results[11].snapshot == bytes([LOCAL_WRITE_PMD] * 2)
