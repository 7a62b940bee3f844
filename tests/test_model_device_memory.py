"""Device-private memory, eviction, HMM_DMIRROR_FLAGS, close and exit: each test is a program
run on the real kernels (7.2.13, 6.12.117 and 6.1.192 under QEMU, identical results unless a
profile says otherwise) with the observations it reported."""

import errno

from test_model_support import (
    EFAULT, assert_accepts, assert_rejects, cpu, dev, err, ok, pattern, patterns, program,
    replaced, snap, trace, wrote, zeros,
)

from harness.prog import OpResult
from reference import check, uapi

EINVAL, ENOENT = errno.EINVAL, errno.ENOENT
W, R, Z = uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_ZERO
DEV_W = uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE     # 0x22
DEV_R = uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_READ      # 0x21
NONE = uapi.PROT_NONE


MIGRATE = """
    region a pages=8
    p0 map a[0:8]
    p0 write a[0:3] seed=3
    p0 read a[3:5]
    p0 open d0 dmirror0
    p0 dev_read d0 a[0:8]
    p0 migrate_to_dev d0 a[0:8]
    p0 snapshot d0 a[0:8]
    p0 dev_read d0 a[0:8]
    p0 open d1 dmirror1
    p0 snapshot d1 a[0:8]
    p0 dev_read d1 a[0:3]
    p0 snapshot d0 a[0:8]
    p0 write a[1:2] seed=4
    p0 snapshot d0 a[0:8]
    p0 migrate_to_sys d0 a[0:8]
    p0 snapshot d0 a[0:8]
    p0 read a[0:8]
"""


def migrate_results(prog):
    data = patterns(prog, 3, "a", 0, 3) + zeros(5)
    after = (pattern(prog, 3, "a", 0), pattern(prog, 4, "a", 1), pattern(prog, 3, "a", 2))
    return [ok(), wrote(3), cpu(*zeros(2)), ok(), dev(8, 1, data),
            dev(8, 0, data),                       # written, zero-page and untouched pages
            snap(*[DEV_W] * 8),                    # all on the device, writable (VM_WRITE)
            dev(8, 0, data),                       # finalize_and_map mirrored every page
            ok(),
            snap(*[NONE] * 8),                     # another device's pages are not valid
            dev(3, 1, data[:3]),                   # ... so its fault brings them back
            snap(W, W, W, DEV_W, DEV_W, DEV_W, DEV_W, DEV_W),
            wrote(1),
            snap(W, W, W, DEV_W, DEV_W, DEV_W, DEV_W, DEV_W),
            dev(5, 0),                             # the five pages still on the device
            snap(*[W] * 8),
            cpu(*after, *zeros(5))]


def test_migration_to_the_device_and_back_as_the_kernel_did_it():
    prog = program(MIGRATE)
    for release in ("7.2.13", "6.12.117", "6.1.192"):
        verdict = check(prog, trace(*migrate_results(prog), release=release))
        assert verdict.ok and verdict.unmodelled_from is None, str(verdict)


def test_migrate_to_sys_counts_only_pages_on_the_device():
    prog = program(MIGRATE)
    results = migrate_results(prog)
    results[14] = dev(8, 0)
    assert_rejects(prog, results, 14, "cpages", "5")


def test_read_only_pages_migrate_to_read_only_device_entries_and_come_back_read_only():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 mprotect a[2:4] r
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:4]
        p0 snapshot d0 a[0:4]
        p0 read a[0:4]
        p0 snapshot d0 a[0:4]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    assert_accepts(prog, ok(), wrote(4), ok(), ok(), dev(4, 0, data),
                   snap(DEV_W, DEV_W, DEV_R, DEV_R), cpu(*data), snap(W, W, R, R))


def test_mprotect_makes_device_entries_readable_and_nothing_makes_them_writable_again():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:4]
        p0 mprotect a[0:4] r
        p0 snapshot d0 a[0:4]
        p0 mprotect a[0:4] rw
        p0 snapshot d0 a[0:4]
        p0 read a[0:4]
        p0 snapshot d0 a[0:4]
        p0 write a[0:4] seed=2
        p0 snapshot d0 a[0:4]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    assert_accepts(prog, ok(), wrote(4), ok(), dev(4, 0, data), ok(), snap(*[DEV_R] * 4), ok(),
                   snap(*[DEV_R] * 4), cpu(*data), snap(*[R] * 4), wrote(4), snap(*[W] * 4))


def test_a_device_read_of_an_own_device_page_without_mirror_entry_is_refused():
    # 7.2.13 crashed here: dmirror_do_fault stored the ZONE_DEVICE page and dmirror_do_read
    # copied from it (docs/findings.md #3).
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:4]
        p0 mprotect a[0:4] r
        p0 dev_read d0 a[0:4]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    verdict = check(prog, trace(ok(), wrote(4), ok(), dev(4, 0, data), ok(), dev(4, 1, data)))
    assert verdict.unmodelled_from == 5


CLOSE = """
    region a pages=4
    region b pages=4
    p0 map a[0:4]
    p0 write a[0:4] seed=1
    p0 open d0 dmirror0
    p0 open d1 dmirror0
    p0 migrate_to_dev d0 a[0:2]
    p0 map b[0:4]
    p0 write b[0:4] seed=2
    p0 migrate_to_dev d1 b[0:2]
    p0 dev_read d0 a[2:4]
    p0 snapshot d1 a[0:4]
    p0 snapshot d1 b[0:4]
    p0 close d0
    p0 snapshot d1 a[0:4]
    p0 snapshot d1 b[0:4]
    p0 dev_read d1 b[0:4]
    p0 release d1
    p0 snapshot d1 b[0:4]
    p0 dev_read d1 b[0:4]
"""


def test_closing_one_fd_evicts_every_page_of_its_device_even_another_fds():
    prog = program(CLOSE)
    a, b = patterns(prog, 1, "a", 0, 4), patterns(prog, 2, "b", 0, 4)
    assert_accepts(prog, ok(), wrote(4), ok(), ok(), dev(2, 0, a[:2]), ok(), wrote(4),
                   dev(2, 0, b[:2]), dev(2, 1, a[2:]),
                   snap(DEV_W, DEV_W, W, W), snap(DEV_W, DEV_W, W, W),
                   ok(),                                  # dmirror_fops_release evicts
                   snap(W, W, W, W), snap(W, W, W, W),
                   dev(4, 1, b),                          # the eviction erased d1's entries
                   dev(0, 0),                             # release: nothing left to evict
                   snap(W, W, W, W), dev(4, 0, b))


def test_flags_fail_alloc_leaves_the_first_page_behind_and_the_read_back_fails():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 flags d0 1
        p0 migrate_to_dev d0 a[0:4]
        p0 snapshot d0 a[0:4]
        p0 flags d0 1
        p0 migrate_to_dev d0 a[0:1]
        p0 snapshot d0 a[0:4]
        p0 flags d0 2
        p0 migrate_to_dev d0 a[0:4]
        p0 flags d0 0
    """)
    data = patterns(prog, 1, "a", 0, 4)
    # 7.2.13: FAIL_ALLOC skips one page, which has no mirror entry: dmirror_do_read -ENOENT
    assert_accepts(prog, ok(), wrote(4), ok(), dev(0, 0), err(ENOENT),
                   snap(W, DEV_W, DEV_W, DEV_W), dev(0, 0), err(ENOENT),
                   snap(W, DEV_W, DEV_W, DEV_W), dev(0, 0), dev(4, 0, data), err(EINVAL))
    # 6.12.117 and 6.1.192 have no HMM_DMIRROR_FLAGS: -EINVAL, and everything migrates
    for release in ("6.12.117", "6.1.192"):
        verdict = check(prog, trace(ok(), wrote(4), ok(), err(EINVAL), dev(4, 0, data),
                                    snap(*[DEV_W] * 4), err(EINVAL), dev(1, 0, data[:1]),
                                    snap(*[DEV_W] * 4), err(EINVAL), dev(4, 0, data),
                                    err(EINVAL), release=release))
        assert verdict.ok, str(verdict)


def test_an_fd_of_an_exited_process_has_no_mm_and_no_entries_left():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 open d1 dmirror0
        p1 dev_read d1 a[0:4]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]
        p1 fork p2
        p1 exit
        p2 dev_read d1 a[0:4]
        p2 snapshot d1 a[0:4]
        p0 dev_read d0 a[0:4]
        p2 read a[0:4]
        p2 migrate_to_dev d1 a[0:1]
        p2 close d1
        p2 exit
        p0 write a[0:1] seed=9
    """)
    data = patterns(prog, 1, "a", 0, 4)
    assert_accepts(prog, ok(), wrote(4), ok(), ok(), dev(4, 1, data), ok(), dev(4, 1, data),
                   ok(), ok(),
                   err(EFAULT),       # exit_mmap erased the table; dmirror_fault: no mm
                   err(EINVAL),       # dmirror_snapshot: mmget_not_zero fails
                   dev(4, 0, data),   # p0's mirror is untouched
                   cpu(*data), err(EINVAL), ok(), ok(), wrote(1))


def test_a_migrated_page_shared_by_fork_comes_back_to_both_processes_when_one_faults():
    # The child's write faults the page back (dmirror_devmem_fault): try_to_migrate()
    # remaps the parent too, to the same new system folio, read-only as fork left both
    # entries; the child's write then copies it. The parent's CLEAR erased d0's entry.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:1]
        p0 fork p1
        p0 snapshot d0 a[0:1]
        p1 write a[0:1] seed=5
        p0 snapshot d0 a[0:1]
        p0 dev_read d0 a[0:1]
        p0 read a[0:1]
        p1 read a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    good = [ok(), wrote(1), ok(), dev(1, 0, data), ok(), snap(DEV_R), wrote(1), snap(R),
            dev(1, 1, data), cpu(*data), cpu(*patterns(prog, 5, "a", 0, 1))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 7, snap(DEV_R)), 7, "snapshot[0]")


def test_the_faulting_process_may_or_may_not_get_the_clear_of_the_rmap_walk():
    # The parent faults page 0 back while the child maps it too. try_to_migrate's rmap walk
    # fires MMU_NOTIFY_CLEAR in each VMA it visits until the folio is unmapped; whether it
    # visits the parent's VMA first depends on the anon_vma interval tree, so d0's entry of
    # page 1 (erased by the +1 quirk of that CLEAR) may go: 7.2, 6.12 and 6.1 erased it.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:1]
        p0 fork p1
        p0 dev_read d0 a[1:2]
        p0 read a[0:1]
        p0 dev_read d0 a[1:2]
        p0 snapshot d0 a[0:2]
        p1 read a[0:1]
        p1 write a[0:1] seed=2
        p0 read a[0:1]
        p1 read a[0:1]
        p0 write a[0:1] seed=3
        p0 snapshot d0 a[0:2]
    """)
    page0, page1 = patterns(prog, 1, "a", 0, 1), patterns(prog, 1, "a", 1, 2)
    observed = [ok(), wrote(2), ok(), dev(1, 0, page0), ok(), dev(1, 1, page1), cpu(*page0),
                dev(1, 1, page1), snap(R, R), cpu(*page0), wrote(1), cpu(*page0),
                cpu(*patterns(prog, 2, "a", 0, 1)), wrote(1), snap(W, R)]
    assert_accepts(prog, *observed)
    assert_accepts(prog, *replaced(observed, 7, dev(1, 0, page1)))


def test_a_shared_device_page_fault_may_clear_a_process_that_no_longer_maps_the_page():
    # p1 copied page 0 before the migration, so it no longer maps the device page, but its
    # VMA covers the page's offset (it sits in the anon_vma since the fork): the rmap walk of
    # p2's fault may CLEAR it, erasing d1's entries of pages 0 and 1. 7.2 kept them (the
    # walk met p0's mapping first and stopped).
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:1]
        p0 fork p2
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:2]
        p2 read a[0:1]
        p1 dev_read d1 a[0:2]
    """)
    child = (pattern(prog, 2, "a", 0), pattern(prog, 1, "a", 1))
    observed = [ok(), wrote(2), ok(), wrote(1), ok(), dev(1, 0, patterns(prog, 1, "a", 0, 1)),
                ok(), ok(), dev(2, 1, child), cpu(*patterns(prog, 1, "a", 0, 1)),
                dev(2, 0, child)]
    assert_accepts(prog, *observed)
    assert_accepts(prog, *replaced(observed, 10, dev(2, 1, child)))
