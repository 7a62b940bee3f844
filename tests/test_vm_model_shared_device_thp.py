"""A device THP mapped by several processes (after fork) on the real kernel (7.2), judged by
the model: a CPU fault from either process, another device's fault, migrate_to_sys through
the child's own dmirror, release and the last close each bring one new THP back in every
process mapping it (reference/device_thp.py); the programs of
tests/test_model_shared_device_thp.py, plus a fault with mirrors of the faulting process
beside the THP (the rmap walk's maybe)."""

from __future__ import annotations

import pytest

from test_model_shared_device_thp import (
    ANOTHER_DEVICE_FAULTS_IT_BACK, CHILD_READ_THEN_DEVICE_WRITE,
    EVICTION_OF_SHARED_DEVICE_THPS, MIGRATE_TO_SYS_FROM_THE_CHILD,
)
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

READ_PMD = 0x05     # HMM_DMIRROR_PROT_READ | HMM_DMIRROR_PROT_PMD


def test_the_child_read_then_its_device_write(kernel_session):
    _, trace, _ = agrees(kernel_session, CHILD_READ_THEN_DEVICE_WRITE)
    assert trace.results[13].snapshot == bytes([READ_PMD] * 2)
    assert trace.results[15].faults == 1


def test_migrate_to_sys_through_the_child_own_dmirror(kernel_session):
    _, trace, _ = agrees(kernel_session, MIGRATE_TO_SYS_FROM_THE_CHILD)
    assert [trace.results[i].cpages for i in (10, 11)] == [0, 1]


def test_release_and_the_last_close_of_shared_device_thps(kernel_session):
    _, trace, _ = agrees(kernel_session, EVICTION_OF_SHARED_DEVICE_THPS)
    assert trace.results[11].pagemap[0].count == 2


def test_another_device_faults_the_shared_device_thp_back(kernel_session):
    agrees(kernel_session, ANOTHER_DEVICE_FAULTS_IT_BACK)


def test_the_parent_faults_it_back_with_mirrors_in_both_processes(kernel_session):
    # p0's read: collect in p0 (its dmirror0 d0 ignores the MMU_NOTIFY_MIGRATE of its own
    # device), try_to_migrate CLEARs p1's 2 MiB (c0 and c1 lose page 512), maybe p0's.
    agrees(kernel_session, """
        region a pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 migrate_to_dev d0 a[0:512]
        p0 fork p1
        p1 open c0 dmirror0
        p1 open c1 dmirror1
        p1 dev_read c0 a[512:516]
        p1 dev_read c1 a[512:516]
        p0 dev_read d0 a[512:516]
        p0 dev_read d1 a[512:516]
        p0 read a[100:101]
        p0 pagemap a[0:2]
        p1 pagemap a[0:2]
        p0 snapshot d0 a[0:2]
        p1 snapshot c0 a[0:2]
        p1 dev_read c0 a[512:516]
        p1 dev_read c1 a[512:516]
        p0 dev_read d0 a[512:516]
        p0 dev_read d1 a[512:516]
        p1 write a[5:6] seed=3
        p0 read a[5:6]
        p1 pagemap a[4:7]
        p0 pagemap a[4:7]
        p1 read a[0:512]
        p0 read a[0:512]
    """)
