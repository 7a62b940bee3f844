"""Device migration of pages mapped by several processes (after fork): migrate_to_dev of a
shared system page, migrate_to_sys and eviction of a shared device page, and the MMU
notifiers of try_to_migrate()'s rmap walk (reference/rmap.py). Each trace is what 7.2.13
reported for the program under QEMU (6.12.117 and 6.1.192 agree: tests/
test_vm_model_shared_device.py)."""

import errno

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, err, ok, pattern, patterns, program, replaced,
    snap, wrote,
)

from harness.prog import OpResult
from reference import uapi

R = uapi.PROT_READ
DEV_R = uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_READ
DEV_W = uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE


def test_migrate_to_dev_moves_a_page_shared_by_fork_in_both_processes():
    # p0 migrates pages 1 and 2, which p1 maps too: migrate_vma_collect_pmd unmaps p0's PTE,
    # try_to_migrate() the child's (MMU_NOTIFY_CLEAR at pages 1 and 2 of p1, so d1 loses
    # pages 1..3), remove_migration_ptes maps one device page in both, read-only as fork
    # left both PTEs. p1's write faults it back in both and copies: p0 keeps seed 1.
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:4]
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[1:3]
        p0 snapshot d0 a[0:4]
        p1 dev_read d1 a[3:4]
        p1 write a[1:2] seed=2
        p0 read a[0:4]
        p1 read a[0:4]
        p0 snapshot d0 a[0:4]
        p1 write a[2:3] seed=3
        p0 read a[2:3]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    child = (data[0], pattern(prog, 2, "a", 1), data[2], data[3])
    good = [ok(), wrote(4), ok(), ok(), dev(4, 1, data), ok(), dev(2, 0, data[1:3]),
            snap(R, DEV_R, DEV_R, R), dev(1, 1, data[3:]), wrote(1), cpu(*data),
            cpu(*child), snap(R, R, R, R), wrote(1), cpu(data[2])]
    assert_accepts(prog, *good)
    # the device entry of a page shared by fork is read-only (a write must still COW) ...
    assert_rejects(prog, replaced(good, 7, snap(R, DEV_W, DEV_W, R)), 7, "snapshot[1]")
    # ... the child's CLEAR took its mirror's entry of page 3 (the +1 quirk) ...
    assert_rejects(prog, replaced(good, 8, dev(1, 0, data[3:])), 8, "faults")
    # ... and the child's write did not reach the parent's page.
    assert_rejects(prog, replaced(good, 10, cpu(*child)), 10, "pages[1]")


def test_migrate_to_sys_brings_a_shared_device_page_back_in_both_processes():
    # Pages 0 and 1 went to the device before the fork. migrate_to_sys from p0 moves them
    # back in p1 too (try_to_migrate: CLEAR at p1's pages 0 and 1, so d1 loses page 2),
    # cpages 2; the new system folio is shared and read-only, so p1's write copies it.
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:2]
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 a[2:4]
        p0 migrate_to_sys d0 a[0:4]
        p1 dev_read d1 a[2:4]
        p0 snapshot d0 a[0:4]
        p1 write a[0:1] seed=2
        p0 read a[0:2]
        p1 read a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    good = [ok(), wrote(4), ok(), dev(2, 0, data[:2]), ok(), ok(), dev(2, 1, data[2:]),
            dev(2, 0), dev(2, 1, data[2:]), snap(R, R, R, R), wrote(1), cpu(*data[:2]),
            cpu(pattern(prog, 2, "a", 0), data[1])]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 8, dev(2, 0, data[2:])), 8, "faults")
    assert_rejects(prog, replaced(good, 11, cpu(pattern(prog, 2, "a", 0), data[1])), 11,
                   "pages[0]")


def test_eviction_brings_a_shared_device_page_back_in_every_process():
    # HMM_DMIRROR_RELEASE evicts the three device pages p0 and p1 share: try_to_migrate
    # CLEARs both (p1's d1 loses page 3 by the +1 quirk), one new folio per page is mapped
    # read-only in both, and p1's write copies.
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:3]
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 a[3:4]
        p0 release d0
        p1 dev_read d1 a[3:4]
        p1 snapshot d1 a[0:4]
        p1 write a[0:1] seed=2
        p0 read a[0:3]
        p1 read a[0:3]
    """)
    data = patterns(prog, 1, "a", 0, 4)
    good = [ok(), wrote(4), ok(), dev(3, 0, data[:3]), ok(), ok(), dev(1, 1, data[3:]),
            dev(0, 0), dev(1, 1, data[3:]), snap(R, R, R, R), wrote(1), cpu(*data[:3]),
            cpu(pattern(prog, 2, "a", 0), *data[1:3])]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 8, dev(1, 0, data[3:])), 8, "faults")
    assert_rejects(prog, replaced(good, 9, snap(DEV_R, DEV_R, DEV_R, R)), 9, "snapshot[0]")


# Also run on the kernels, with a pagemap after it: tests/test_vm_model_shared_device.py
EVICTION_AFTER_THE_PARENT_COPIED = """
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p0 write a[0:1] seed=2
        p1 open d1 dmirror0
        p1 migrate_to_dev d1 a[0:1]
        p0 open d0 dmirror1
        p0 dev_read d0 a[0:2]
        p1 close d1
        p0 dev_read d0 a[0:2]
"""


def test_eviction_may_clear_a_process_that_copied_the_page():
    # p0 copied page 0 after the fork; p1 migrates the original (mapped once, in p0's
    # anon_vma, where p0's VMA is too). Closing d1 evicts it: try_to_migrate's walk met p0's
    # VMA before p1's mapping and fired a CLEAR there, so d0 (another device) lost pages 0
    # and 1. The walk order is not followed: either is allowed.
    prog = program(EVICTION_AFTER_THE_PARENT_COPIED)
    parent = (pattern(prog, 2, "a", 0), pattern(prog, 1, "a", 1))
    observed = [ok(), wrote(2), ok(), wrote(1), ok(), dev(1, 0, patterns(prog, 1, "a", 0, 1)),
                ok(), dev(2, 1, parent), ok(), dev(2, 1, parent)]
    assert_accepts(prog, *observed)
    assert_accepts(prog, *replaced(observed, 9, dev(2, 0, parent)))


def test_fail_alloc_on_a_shared_page_restores_it_in_both_after_the_clear():
    # FAIL_ALLOC: page 0 (shared) gets no device page and is mapped back in both processes
    # (remove_migration_ptes(src, src)), page 1 migrates; the read back fails at page 0.
    # The child's CLEARs of both pages still happened: d1 lost page 2.
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:3] seed=1
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 a[0:3]
        p0 open d0 dmirror0
        p0 flags d0 1
        p0 migrate_to_dev d0 a[0:2]
        p0 snapshot d0 a[0:3]
        p1 dev_read d1 a[2:3]
    """)
    data = patterns(prog, 1, "a", 0, 3)
    good = [ok(), wrote(3), ok(), ok(), dev(3, 1, data), ok(), dev(0, 0),
            err(errno.ENOENT), snap(R, DEV_R, R), dev(1, 1, data[2:])]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 8, snap(DEV_R, DEV_R, R)), 8, "snapshot[0]")


def test_numa_migration_and_pageout_may_clear_a_process_that_copied_the_page():
    # The same rmap walk in try_to_migrate (move_pages) and try_to_unmap (pageout): p1's
    # page 0 and 1 are mapped once, in p0's anon_vma, where p0's VMA (p0 copied both pages)
    # came first, so p0's d0 lost pages 0 and 1, then 1 and 2 (7.2, 6.1).
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p0 write a[0:2] seed=2
        p0 open d0 dmirror1
        p0 dev_read d0 a[0:4]
        p1 move_pages a[0:1] 1
        p0 dev_read d0 a[0:4]
        p1 madvise a[1:2] pageout
        p0 dev_read d0 a[0:4]
    """)
    parent = patterns(prog, 2, "a", 0, 2) + patterns(prog, 1, "a", 2, 4)
    observed = [ok(), wrote(4), ok(), wrote(2), ok(), dev(4, 1, parent),
                OpResult(node_status=(1,)), dev(4, 1, parent), ok(), dev(4, 1, parent)]
    assert_accepts(prog, *observed)
    assert_accepts(prog, *replaced(replaced(observed, 7, dev(4, 0, parent)), 9,
                                   dev(4, 0, parent)))


def test_migrate_to_dev_of_a_shmem_page_mapped_by_both_processes_unmaps_and_restores_it():
    # A memfd page mapped by p0 and p1: collected, unmapped from p1 too (try_to_migrate
    # walks the object's mappings: a CLEAR in p1, whose d1 loses pages 0..2), not migrated
    # (migrate_vma_pages takes only anonymous folios) and mapped back in both. The walk
    # visited p0's own VMA first (7.2, 6.12, 6.1): d0 lost pages 0 and 1 and the read back
    # failed; had it not, the read back succeeds. Both are allowed.
    prog = program("""
        region m pages=3
        p0 map m[0:3] memfd
        p0 write m[0:3] seed=1
        p0 fork p1
        p1 open d1 dmirror1
        p1 dev_read d1 m[0:3]
        p0 open d0 dmirror0
        p0 dev_read d0 m[0:3]
        p0 migrate_to_dev d0 m[0:2]
        p1 dev_read d1 m[0:3]
        p0 dev_read d0 m[0:3]
        p1 write m[0:1] seed=2
        p0 read m[0:1]
    """)
    data = patterns(prog, 1, "m", 0, 3)
    observed = [ok(), wrote(3), ok(), ok(), dev(3, 1, data), ok(), dev(3, 1, data),
                err(errno.ENOENT), dev(3, 1, data), dev(3, 1, data), wrote(1),
                cpu(pattern(prog, 2, "m", 0))]
    assert_accepts(prog, *observed)
    unvisited = replaced(replaced(observed, 7, dev(2, 0, data[:2])), 9, dev(3, 0, data))
    assert_accepts(prog, *unvisited)
    assert_rejects(prog, replaced(observed, 8, dev(3, 0, data)), 8, "faults")
