"""tools/testing/selftests/mm/hmm-tests.c scenarios, transcribed: what hmm-tests asserts is
what the model must predict (HMM_BUFFER_SIZE is 1024 pages; `i` stores become patterns)."""

from test_model_support import (
    EFAULT, EPERM, assert_accepts, assert_rejects, cpu, dev, err, ok, patterns, program,
    replaced, snap, wrote, zeros,
)

from reference import uapi

N = 1024


def test_anon_read():
    # Pages 2.. written, the buffer made read-only, page 1 read by the CPU (zero page), then
    # the device reads everything with one fault.
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 write a[2:{N}] seed=1
        p0 mprotect a[0:{N}] r
        p0 read a[1:2]
        p0 dev_read d0 a[0:{N}]
    """)
    data = zeros(2) + patterns(prog, 1, "a", 2, N)
    good = [ok(), ok(), wrote(N - 2), ok(), cpu(*zeros(1)), dev(N, 1, data)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 5, dev(N, 2, data)), 5, "faults", "1")


def test_anon_read_prot():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 write a[0:{N}] seed=1
        p0 mprotect a[0:{N}] none
        p0 dev_read d0 a[0:{N}]
        p0 mprotect a[0:{N}] r
        p0 read a[0:{N}]
    """)
    assert_accepts(prog, ok(), ok(), wrote(N), ok(), err(EFAULT), ok(),
                   cpu(*patterns(prog, 1, "a", 0, N)))


def test_anon_write():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 dev_write d0 a[0:{N}] seed=1
        p0 read a[0:{N}]
    """)
    assert_accepts(prog, ok(), ok(), dev(N, 1), cpu(*patterns(prog, 1, "a", 0, N)))


def test_anon_write_prot():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 mprotect a[0:{N}] r
        p0 dev_read d0 a[0:1]
        p0 dev_write d0 a[0:{N}] seed=1
        p0 read a[0:{N}]
        p0 mprotect a[0:{N}] rw
        p0 dev_write d0 a[0:{N}] seed=1
        p0 read a[0:{N}]
    """)
    good = [ok(), ok(), ok(), dev(1, 1, zeros(1)), err(EPERM), cpu(*zeros(N)), ok(),
            dev(N, 1), cpu(*patterns(prog, 1, "a", 0, N))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 4, err(EFAULT)), 4, "errno", "EPERM")


def test_anon_write_child():
    # The child opens its own mirror, writes through it (COW), and sees the device's data;
    # the parent's buffer is unchanged.
    prog = program(f"""
        region a pages={N}
        p0 map a[0:{N}]
        p0 open d0 dmirror0
        p0 write a[0:{N}] seed=1
        p0 fork p1
        p1 read a[0:{N}]
        p1 open d1 dmirror0
        p1 dev_write d1 a[0:{N}] seed=2
        p1 read a[0:{N}]
        p0 read a[0:{N}]
    """)
    assert_accepts(prog, ok(), ok(), wrote(N), ok(), cpu(*patterns(prog, 1, "a", 0, N)), ok(),
                   dev(N, 1), cpu(*patterns(prog, 2, "a", 0, N)),
                   cpu(*patterns(prog, 1, "a", 0, N)))


def test_exclusive():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 write a[0:{N}] seed=1
        p0 exclusive d0 a[0:{N}]
        p0 read a[0:{N}]
        p0 write a[0:{N}] seed=2
        p0 read a[0:{N}]
        p0 check_exclusive d0 a[0:{N}]
    """)
    good = [ok(), ok(), wrote(N), dev(N, 0, patterns(prog, 1, "a", 0, N)),
            cpu(*patterns(prog, 1, "a", 0, N)), wrote(N), cpu(*patterns(prog, 2, "a", 0, N)),
            dev(0, 0)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 7, err(EPERM)), 7, "errno", "0")


def test_exclusive_mprotect():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 write a[0:{N}] seed=1
        p0 exclusive d0 a[0:{N}]
        p0 mprotect a[0:{N}] r
        p0 dev_write d0 a[0:{N}] seed=2
    """)
    assert_accepts(prog, ok(), ok(), wrote(N), dev(N, 0, patterns(prog, 1, "a", 0, N)), ok(),
                   err(EPERM))


def test_exclusive_cow():
    prog = program(f"""
        region a pages={N}
        p0 open d0 dmirror0
        p0 map a[0:{N}]
        p0 write a[0:{N}] seed=1
        p0 exclusive d0 a[0:{N}]
        p0 fork p1
        p1 read a[0:{N}]
        p1 write a[0:{N}] seed=2
        p1 read a[0:{N}]
        p0 read a[0:{N}]
        p0 write a[0:{N}] seed=3
        p0 read a[0:{N}]
    """)
    old = patterns(prog, 1, "a", 0, N)
    assert_accepts(prog, ok(), ok(), wrote(N), dev(N, 0, old), ok(), cpu(*old), wrote(N),
                   cpu(*patterns(prog, 2, "a", 0, N)), cpu(*old), wrote(N),
                   cpu(*patterns(prog, 3, "a", 0, N)))


def test_snapshot_without_migration():
    # hmm2/snapshot, pages 0..4 (5 and 6 are migrated to devices, not a v1 op):
    # PROT_NONE VMA, hole, read-only zero page, read-only page, read-write page.
    prog = program("""
        region a pages=5
        p0 open d0 dmirror0
        p0 map a[0:5]
        p0 mprotect a[0:5] none
        p0 munmap a[1:2]
        p0 mprotect a[2:3] r
        p0 read a[2:3]
        p0 mprotect a[3:4] rw
        p0 write a[3:4] seed=1
        p0 mprotect a[3:4] r
        p0 mprotect a[4:5] rw
        p0 write a[4:5] seed=1
        p0 snapshot d0 a[0:5]
    """)
    expected = snap(uapi.PROT_ERROR, uapi.PROT_ERROR, uapi.PROT_ZERO | uapi.PROT_READ,
                    uapi.PROT_READ, uapi.PROT_WRITE)
    good = [ok(), ok(), ok(), ok(), ok(), cpu(*zeros(1)), ok(), wrote(1), ok(), ok(), wrote(1),
            expected]
    assert_accepts(prog, *good)
    wrong = snap(uapi.PROT_NONE, uapi.PROT_ERROR, uapi.PROT_ZERO | uapi.PROT_READ,
                 uapi.PROT_READ, uapi.PROT_WRITE)
    assert_rejects(prog, replaced(good, 11, wrong), 11, "snapshot[0]", "0xff (ERROR)")


def test_snapshot():
    # hmm2/snapshot in full: page 5 migrated to device 0 (the snapshotting one), page 6 to
    # device 1; hmm_range_fault reports another device's private page as not valid (NONE).
    prog = program("""
        region a pages=7
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 map a[0:7]
        p0 mprotect a[0:7] none
        p0 munmap a[1:2]
        p0 mprotect a[2:3] r
        p0 read a[2:3]
        p0 mprotect a[3:4] rw
        p0 write a[3:4] seed=1
        p0 mprotect a[3:4] r
        p0 mprotect a[4:7] rw
        p0 write a[4:5] seed=1
        p0 migrate_to_dev d0 a[5:6]
        p0 migrate_to_dev d1 a[6:7]
        p0 snapshot d0 a[0:7]
    """)
    expected = snap(uapi.PROT_ERROR, uapi.PROT_ERROR, uapi.PROT_ZERO | uapi.PROT_READ,
                    uapi.PROT_READ, uapi.PROT_WRITE,
                    uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE, uapi.PROT_NONE)
    good = [ok(), ok(), ok(), ok(), ok(), ok(), cpu(*zeros(1)), ok(), wrote(1), ok(), ok(),
            wrote(1), dev(1, 0, zeros(1)), dev(1, 0, zeros(1)), expected]
    assert_accepts(prog, *good)
    remote = snap(uapi.PROT_ERROR, uapi.PROT_ERROR, uapi.PROT_ZERO | uapi.PROT_READ,
                  uapi.PROT_READ, uapi.PROT_WRITE,
                  uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE,
                  uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE)
    assert_rejects(prog, replaced(good, 14, remote), 14, "snapshot[6]")
