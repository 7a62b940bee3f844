"""userfaultfd write-protection over shmem and private file mappings (reference/uffd_shmem.py):
PTE markers on empty PTEs, faults on them, writenotify while registered, zap, reclaim and
fork; checked against 7.2.13, 6.12.117 and 6.1.192 by tests/test_vm_model_uffd_shmem.py."""

import errno
import signal

from test_model_support import cpu, ok, patterns, program, trace, wrote, zeros

from harness.prog import Page
from harness.prog.observation import PM_FILE, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SWAP, PM_UFFD_WP
from reference import check, expected, uapi

BUS = Page(signal=int(signal.SIGBUS))
R, W = uapi.PROT_READ, uapi.PROT_WRITE
MARKER = PM_SWAP | PM_UFFD_WP


def only(prog, op_index: int, release: str = "7.2.13"):
    (expect,) = expected(prog, release)[op_index]
    return expect


def flags(prog, op_index: int, release: str = "7.2.13") -> list[int]:
    """The pagemap flag bits the model states per page, without soft-dirty."""
    return [spec.flags & ~(1 << 55) for spec in only(prog, op_index, release).pagemap]


def test_uffd_wp_on_puts_a_marker_on_every_empty_pte_of_a_shmem_vma():
    # change_pte_range with MM_CP_UFFD_WP: userfaultfd_wp_use_markers for a file VMA
    prog = program("""
        region s pages=4
        p0 map s[0:4] memfd
        p0 write s[0:1] seed=1
        p0 uffd_register s[0:4]
        p0 uffd_wp s[0:3] on
        p0 pagemap s[0:4]
    """)
    assert flags(prog, 4) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE | PM_UFFD_WP,
                              MARKER, MARKER, 0]
    marker = only(prog, 4).pagemap[1]
    assert (marker.frame, marker.swp_type) == ("marker", 31)   # SWP_PTE_MARKER
    assert only(prog, 4, "6.1.192").pagemap[1].swp_type == 30  # SWP_SWAPIN_ERROR after it


def test_an_anonymous_vma_gets_no_marker():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 uffd_register a[0:2]
        p0 uffd_wp a[0:2] on
        p0 pagemap a[0:2]
    """)
    assert flags(prog, 3) == [0, 0]


def test_a_write_to_a_marker_maps_the_page_write_protected_and_is_sigbus():
    # do_shared_fault / do_cow_fault, set_pte_range: pte_mkuffd_wp write-protects; the retry
    # goes to do_wp_page -> handle_userfault
    prog = program("""
        region s pages=2
        region f pages=2
        p0 map s[0:2] shared
        p0 map f[0:2] file
        p0 uffd_register s[0:2]
        p0 uffd_register f[0:2]
        p0 uffd_wp s[0:2] on
        p0 uffd_wp f[0:2] on
        p0 write s[0:1] seed=1
        p0 write f[0:1] seed=1
        p0 pagemap s[0:1]
        p0 pagemap f[0:1]
        p0 read s[0:1]
    """)
    results = [ok()] * 6 + [cpu(BUS), cpu(BUS)]
    assert check(prog, trace(*results)).ok
    # the shared page is the object's folio, the private one an exclusive anonymous copy
    assert flags(prog, 8) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE | PM_UFFD_WP]
    assert flags(prog, 9) == [PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_UFFD_WP]
    assert only(prog, 10).pages == zeros(1)   # the store did not happen


def test_a_read_of_a_marker_maps_the_page_with_the_bit_and_no_fault_around():
    # should_fault_around -> uffd_disable_fault_around for a registered VMA
    prog = program("""
        region s pages=4
        p0 map s[0:4] memfd
        p0 write s[0:4] seed=1
        p0 madvise s[0:4] dontneed
        p0 uffd_register s[0:4]
        p0 uffd_wp s[0:1] on
        p0 read s[0:2]
        p0 pagemap s[0:4]
    """)
    assert flags(prog, 6) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE | PM_UFFD_WP,
                              PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE, 0, 0]


def test_a_registered_shared_vma_maps_read_faults_read_only():
    # userfaultfd_set_vm_flags -> vma_set_page_prot: writenotify while registered; the
    # unregister's uffd_wp_range(false) runs before the flag goes, so it write-protects
    # what was mapped writable (pte_modify with that vm_page_prot); after it a read fault
    # maps writable again
    prog = program("""
        region s pages=4
        p0 open d dmirror0
        p0 map s[0:4] shared
        p0 read s[0:1]
        p0 uffd_register s[0:4]
        p0 read s[1:2]
        p0 uffd_unregister s[0:4]
        p0 read s[2:3]
        p0 snapshot d s[0:3]
    """)
    assert only(prog, 7).snapshot == bytes((R, R, W))


def test_dontneed_keeps_the_protection_as_markers_and_munmap_drops_them():
    # zap_install_uffd_wp_if_needed (no ZAP_FLAG_DROP_MARKER); unmap_vmas drops markers
    prog = program("""
        region s pages=3
        p0 map s[0:3] memfd
        p0 write s[0:3] seed=1
        p0 uffd_register s[0:3]
        p0 uffd_wp s[0:2] on
        p0 madvise s[0:3] dontneed
        p0 pagemap s[0:3]
        p0 read s[0:3]
        p0 pagemap s[0:3]
        p0 munmap s[0:3]
        p0 map s[0:3] memfd
        p0 pagemap s[0:3]
    """)
    assert flags(prog, 5) == [MARKER, MARKER, 0]
    assert only(prog, 6).pages == patterns(prog, 1, "s", 0, 3)
    assert flags(prog, 7) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE | PM_UFFD_WP] * 2 + \
        [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE]
    assert flags(prog, 10) == [0, 0, 0]


def test_reclaim_of_a_protected_page_cache_folio_leaves_a_marker():
    # try_to_unmap_one -> pte_install_uffd_wp_if_needed
    prog = program("""
        region s pages=2
        p0 map s[0:2] shared
        p0 write s[0:2] seed=1
        p0 uffd_register s[0:2]
        p0 uffd_wp s[0:1] on
        p0 madvise s[0:2] pageout
        p0 pagemap s[0:2]
    """)
    assert flags(prog, 5) == [MARKER, 0]


def test_uffd_wp_off_drops_the_markers_and_leaves_shared_ptes_read_only():
    # MM_CP_UFFD_WP_RESOLVE: pte_clear on a marker; no MM_CP_TRY_CHANGE_WRITABLE for a
    # VMA with writenotify. 6.1 un-protects with vm_get_page_prot(vm_flags): writable
    # (docs/findings.md #14)
    prog = program("""
        region s pages=2
        p0 open d dmirror0
        p0 map s[0:2] memfd
        p0 read s[0:1]
        p0 uffd_register s[0:2]
        p0 uffd_wp s[0:2] on
        p0 uffd_wp s[0:2] off
        p0 pagemap s[0:2]
        p0 snapshot d s[0:1]
    """)
    assert flags(prog, 6) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE, 0]
    assert only(prog, 7).snapshot == bytes((R,))   # uffd_wp on write-protected it
    prog = program("""
        region s pages=1
        p0 open d dmirror0
        p0 map s[0:1] memfd
        p0 uffd_register s[0:1]
        p0 read s[0:1]
        p0 uffd_wp s[0:1] on
        p0 uffd_wp s[0:1] off
        p0 snapshot d s[0:1]
    """)
    assert only(prog, 6).snapshot == bytes((R,))
    assert only(prog, 6, "6.12.117").snapshot == bytes((R,))
    assert only(prog, 6, "6.1.192").snapshot == bytes((W,))


def test_the_device_and_gup_cannot_write_through_a_marker():
    prog = program("""
        region s pages=2
        p0 open d dmirror0
        p0 map s[0:2] memfd
        p0 uffd_register s[0:2]
        p0 uffd_wp s[0:2] on
        p0 dev_write d s[0:1] seed=1
        p0 exclusive d s[1:2]
        p0 pagemap s[0:2]
        p0 snapshot d s[0:2]
    """)
    # hmm_range_fault and make_device_exclusive's GUP: the first fault maps the page
    # write-protected, the second ends in handle_userfault -> VM_FAULT_SIGBUS -> -EFAULT
    assert only(prog, 4).errno == only(prog, 5).errno == (errno.EFAULT,)
    assert flags(prog, 6) == [PM_PRESENT | PM_FILE | PM_MMAP_EXCLUSIVE | PM_UFFD_WP] * 2
    assert only(prog, 7).snapshot == bytes((R, R))


def test_a_fork_child_gets_neither_the_registration_nor_the_markers():
    # dup_userfaultfd without UFFD_FEATURE_EVENT_FORK; copy_pte_marker drops the marker for
    # an unregistered child VMA; the shared VMA is not copied at all
    prog = program("""
        region s pages=2
        region f pages=2
        p0 map s[0:2] shared
        p0 map f[0:2] file
        p0 write f[0:1] seed=1
        p0 uffd_register s[0:2]
        p0 uffd_register f[0:2]
        p0 uffd_wp s[0:2] on
        p0 uffd_wp f[0:2] on
        p0 fork p1
        p1 pagemap s[0:2]
        p1 pagemap f[0:2]
        p1 write s[0:2] seed=2
        p1 write f[0:2] seed=2
    """)
    assert flags(prog, 8) == [0, 0]
    assert flags(prog, 9) == [PM_PRESENT, 0]
    assert only(prog, 10).pages == only(prog, 11).pages == wrote(2).pages
