"""HMM_DMIRROR_EXCLUSIVE / CHECK_EXCLUSIVE: make_device_exclusive and its revocation."""

from test_model_support import (
    EFAULT, EPERM, assert_accepts, assert_rejects, cpu, dev, err, ok, pattern, patterns,
    program, replaced, snap, wrote, zeros,
)

from reference import uapi


def test_exclusive_then_check_exclusive_is_eperm():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:2]
        p0 check_exclusive d0 a[0:2]   # dmirror_check_atomic finds ATOMIC entries
    """)
    good = [ok(), wrote(2), ok(), dev(2, 0, patterns(prog, 1, "a", 0, 2)), err(EPERM)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 4, dev(0, 0)), 4, "errno", "EPERM")


def test_exclusive_then_cpu_read_revokes_the_device_access():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:2]
        p0 snapshot d0 a[0:2]          # device-exclusive entries are not valid CPU PTEs
        p0 read a[0:2]                 # remove_device_exclusive_entry: MMU_NOTIFY_CLEAR
        p0 check_exclusive d0 a[0:2]
        p0 snapshot d0 a[0:2]          # restore_exclusive_pte: writable again
    """)
    data = patterns(prog, 1, "a", 0, 2)
    good = [ok(), wrote(2), ok(), dev(2, 0, data), snap(uapi.PROT_NONE, uapi.PROT_NONE),
            cpu(*data), dev(0, 0), snap(uapi.PROT_WRITE, uapi.PROT_WRITE)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 6, err(EPERM)), 6, "errno", "0")


def test_exclusive_faults_untouched_pages_in_as_new_zeroed_folios():
    # make_device_exclusive faults the page in with FOLL_WRITE: not the zero page.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 read a[0:1]
        p0 snapshot d0 a[0:1]
    """)
    assert_accepts(prog, ok(), ok(), dev(1, 0, zeros(1)), cpu(*zeros(1)),
                   snap(uapi.PROT_WRITE))


def test_exclusive_on_read_only_memory_fails_with_efault():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 mprotect a[0:1] r
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]   # check_vma_flags: FOLL_WRITE without VM_WRITE
    """)
    assert_accepts(prog, ok(), ok(), ok(), err(EFAULT))
    assert_rejects(prog, [ok(), ok(), ok(), dev(1, 0, zeros(1))], 3, "errno", "EFAULT")


def test_a_failing_exclusive_keeps_the_pages_before_the_failure_exclusive():
    prog = program("""
        region a pages=3
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:3]         # a[2] is not mapped
        p0 check_exclusive d0 a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), err(EFAULT), err(EPERM))


def test_the_device_reads_its_atomic_pages_without_revoking_them():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=4
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 dev_read d0 a[0:1]          # the ATOMIC entry is a mirror entry: no fault
        p0 check_exclusive d0 a[0:1]
    """)
    data = [pattern(prog, 4, "a", 0)]
    assert_accepts(prog, ok(), wrote(1), ok(), dev(1, 0, data), dev(1, 0, data), err(EPERM))


def test_a_device_read_that_faults_restores_exclusive_pages_behind_the_missing_one():
    # dmirror_fault walks from the first missing entry to the end of the range;
    # hmm_vma_handle_pte faults device-exclusive entries, which restores them.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 exclusive d0 a[1:2]
        p0 dev_read d0 a[0:2]
        p0 check_exclusive d0 a[0:2]
        p0 snapshot d0 a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), dev(1, 0, zeros(1)), dev(2, 1, zeros(2)), dev(0, 0),
                   snap(uapi.PROT_ZERO | uapi.PROT_READ, uapi.PROT_WRITE))


def test_check_exclusive_looks_only_at_its_own_fd():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 exclusive d0 a[0:1]
        p0 check_exclusive d1 a[0:1]
        p0 check_exclusive d0 a[0:1]
    """)
    assert_accepts(prog, ok(), ok(), ok(), dev(1, 0, zeros(1)), dev(0, 0), err(EPERM))


def test_exclusive_revokes_other_mirrors_of_the_same_mm():
    # MMU_NOTIFY_EXCLUSIVE is not a MIGRATE event: dmirror_interval_invalidate of d1 drops it.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 dev_read d1 a[0:1]
        p0 exclusive d0 a[0:1]
        p0 dev_read d1 a[0:1]          # faults, and the fault takes the page back
        p0 check_exclusive d0 a[0:1]
    """)
    data = [pattern(prog, 1, "a", 0)]
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), dev(1, 1, data), dev(1, 0, data),
                   dev(1, 1, data), dev(0, 0))


def test_fork_restores_exclusive_entries_and_revokes_the_device():
    # copy_nonpresent_pte restores device-exclusive entries before copying them, and
    # copy_page_range invalidates the parent's whole VMA (it has an anon_vma).
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 fork p1
        p0 check_exclusive d0 a[0:1]
        p0 snapshot d0 a[0:1]          # shared after fork: read-only in the parent
    """)
    good = [ok(), wrote(1), ok(), dev(1, 0, [pattern(prog, 1, "a", 0)]), ok(), dev(0, 0),
            snap(uapi.PROT_READ)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 5, err(EPERM)), 5, "errno", "0")
