"""uffd-wp over shmem and private file mappings on the real kernels (7.2, 6.12, 6.1), judged by
the model (reference/uffd_shmem.py): PTE markers, faults on them, writenotify while
registered, dontneed, reclaim, fork, the device, and 6.1's un-protect (docs/findings.md #14)."""

from __future__ import annotations

import signal

import pytest

from conftest import kernel_fixture
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

each_kernel = kernel_fixture()

MARKER_BITS = (1 << 62) | (1 << 57)   # PM_SWAP | PM_UFFD_WP


def test_markers_protect_empty_ptes_of_a_shared_mapping(each_kernel):
    _, trace, _ = agrees(each_kernel, """
        region s pages=8
        p0 map s[0:8] memfd
        p0 write s[0:2] seed=1
        p0 read s[2:3]
        p0 uffd_register s[0:8]
        p0 read s[3:4]
        p0 pagemap s[0:8]
        p0 uffd_wp s[0:6] on
        p0 pagemap s[0:8]
        p0 write s[0:1] seed=2
        p0 write s[4:5] seed=2
        p0 write s[6:7] seed=2
        p0 read s[5:6]
        p0 pagemap s[0:8]
        p0 smaps s[0:8]
        p0 madvise s[0:2] dontneed
        p0 pagemap s[0:8]
        p0 read s[0:2]
        p0 pagemap s[0:8]
        p0 uffd_wp s[0:8] off
        p0 pagemap s[0:8]
        p0 write s[0:8] seed=3
        p0 pagemap s[0:8]
    """)
    assert trace.results[7].pagemap[4].entry & MARKER_BITS == MARKER_BITS
    assert [page.signal for page in trace.results[8].pages] == [signal.SIGBUS]


def test_markers_in_a_private_file_mapping_the_device_fork_and_reclaim(each_kernel):
    agrees(each_kernel, """
        region f pages=8
        region s pages=4
        p0 open d0 dmirror0
        p0 map f[0:8] file
        p0 read f[0:2]
        p0 write f[2:3] seed=1
        p0 uffd_register f[0:8]
        p0 uffd_wp f[0:8] on
        p0 pagemap f[0:8]
        p0 write f[4:5] seed=2
        p0 pagemap f[4:5]
        p0 read f[5:6]
        p0 dev_write d0 f[6:7] seed=3
        p0 pagemap f[0:8]
        p0 dev_read d0 f[7:8]
        p0 snapshot d0 f[0:8]
        p0 fork p1
        p1 pagemap f[0:8]
        p0 madvise f[0:3] dontneed
        p0 pagemap f[0:8]
        p0 uffd_unregister f[0:4]
        p0 pagemap f[0:8]
        p0 write f[0:8] seed=4
        p0 map s[0:4] shared
        p0 uffd_register s[0:4]
        p0 write s[0:2] seed=5
        p0 uffd_wp s[0:4] on
        p0 madvise s[0:2] pageout
        p0 pagemap s[0:4]
        p0 smaps s[0:4]
        p0 read s[0:1]
        p0 pagemap s[0:4]
        p0 munmap s[1:2]
        p0 map s[1:2] shared
        p0 pagemap s[0:4]
    """)


def test_writenotify_while_registered_and_the_unprotect(each_kernel):
    # 6.1 un-protects a shared mapping writable (vm_get_page_prot), newer kernels keep
    # vm_page_prot's write protection: the SNAPSHOT shows WRITE or READ
    agrees(each_kernel, """
        region s pages=8
        region a pages=4
        region f pages=4
        p0 open d0 dmirror0
        p0 map s[0:8] shared
        p0 write s[6:8] seed=1
        p0 uffd_register s[0:4]
        p0 read s[0:1]
        p0 write s[2:3] seed=2
        p0 snapshot d0 s[0:8]
        p0 uffd_wp s[0:4] on
        p0 migrate_to_dev d0 s[0:4]
        p0 move_pages s[3:4]
        p0 move_pages s[1:3] 1
        p0 pagemap s[0:4]
        p0 mprotect s[0:8] r
        p0 mprotect s[0:8] rw
        p0 clear_soft_dirty
        p0 pagemap s[0:8]
        p0 smaps s[0:8]
        p0 uffd_unregister s[0:8]
        p0 pagemap s[0:8]
        p0 read s[3:4]
        p0 snapshot d0 s[0:8]
        p0 map a[0:4]
        p0 write a[0:2] seed=2
        p0 map f[0:4] file
        p0 uffd_register a[0:4]
        p0 uffd_register f[0:4]
        p0 uffd_wp a[0:4] on
        p0 uffd_wp f[0:4] on
        p0 pagemap a[0:4]
        p0 pagemap f[0:4]
        p0 smaps f[0:4]
        p0 migrate_to_dev d0 f[0:4]
        p0 dev_read d0 f[0:2]
        p0 pagemap f[0:4]
        p0 munmap f[0:2]
        p0 pagemap f[0:4]
        p0 uffd_unregister a[0:4]
        p0 write a[0:4] seed=3
        p0 exit
    """)


def test_a_fork_child_of_a_registered_shared_mapping_maps_writable(each_kernel):
    agrees(each_kernel, """
        region s pages=4
        p0 open d0 dmirror0
        p0 map s[0:4] shared
        p0 read s[0:1]
        p0 uffd_register s[0:4]
        p0 read s[1:2]
        p0 uffd_wp s[0:4] on
        p0 fork p1
        p1 open d1 dmirror0
        p1 read s[2:3]
        p1 snapshot d1 s[0:4]
        p1 pagemap s[0:4]
        p1 write s[0:4] seed=1
        p0 read s[0:4]
        p0 uffd_unregister s[0:4]
        p0 snapshot d0 s[0:4]
        p0 pagemap s[0:4]
    """)


def test_soft_dirty_missed_after_uffd_unprotect_on_6_1(each_kernel):
    # docs/findings.md #14: the regression program; the model follows each kernel
    _, trace, _ = agrees(each_kernel, """
        region s pages=1
        p0 map s[0:1] memfd
        p0 write s[0:1] seed=1
        p0 uffd_register s[0:1]
        p0 clear_soft_dirty
        p0 uffd_unregister s[0:1]
        p0 write s[0:1] seed=2
        p0 pagemap s[0:1]
    """)
    soft_dirty = bool(trace.results[6].pagemap[0].entry & (1 << 55))
    assert soft_dirty is not trace.kernel_release.startswith("6.1.")
