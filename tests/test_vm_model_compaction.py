"""Compaction on the real kernels (7.2, 6.12, 6.1), judged by the model: pages may move
(new PFNs, the device mirror re-faults them; whether any moves is the kernel's choice: on
7.2 they did, on 6.1 not in one run), content and sharing stay."""

from __future__ import annotations

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()


def test_compaction_moves_pages_and_the_mirror_faults_them_again(each_kernel):
    agrees(each_kernel, """
        region a pages=64
        region b pages=8
        p0 map a[0:64]
        p0 write a[0:64] seed=1
        p0 read a[60:64]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:64]
        p0 pagemap a[0:4]
        p0 fork p1
        p1 write a[1:2] seed=2
        p0 compact
        p0 pagemap a[0:4]
        p1 pagemap a[0:4]
        p0 dev_read d0 a[0:64]
        p0 check_exclusive d0 a[0:64]
        p0 dev_write d0 a[0:64] seed=3
        p0 snapshot d0 a[0:64]
        p0 map b[0:8]
        p0 write b[0:8] seed=4
        p0 migrate_to_dev d0 b[0:4]
        p0 compact
        p0 compact
        p0 dev_read d0 b[0:8]
        p0 pagemap b[0:8]
        p1 read a[0:4]
    """)


def test_compaction_over_device_exclusive_entries(each_kernel):
    # 7.2: each entry may be taken (the page comes back read-only, no longer atomic; 7.2.13
    # took all three); 6.12 and 6.1 never take one (the entry holds the page unmapped)
    agrees(each_kernel, """
        region a pages=8
        p0 map a[0:8]
        p0 open d0 dmirror0
        p0 write a[0:8] seed=1
        p0 exclusive d0 a[1:4]
        p0 compact
        p0 pagemap a[0:8]
        p0 check_exclusive d0 a[0:8]
        p0 snapshot d0 a[0:8]
        p0 dev_read d0 a[0:8]
        p0 write a[0:8] seed=2
        p0 pagemap a[0:8]
        p0 dev_read d0 a[0:8]
    """)
