"""HMM_DMIRROR_WRITE: write faults (HMM_PFN_REQ_WRITE) break COW and replace the zero page."""

from test_model_support import (
    EFAULT, EPERM, assert_accepts, assert_rejects, cpu, dev, err, ok, pattern, patterns,
    program, replaced, snap, wrote, zeros,
)

from reference import uapi


def test_device_write_then_cpu_read_sees_the_device_data():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:3] seed=5
        p0 read a[0:3]
        p0 snapshot d0 a[0:3]
    """)
    good = [ok(), ok(), dev(3, 1), cpu(*patterns(prog, 5, "a", 0, 3)),
            snap(*[uapi.PROT_WRITE] * 3)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 3, cpu(*zeros(3))), 3, "pages[0]")


def test_device_write_over_zero_pages_replaces_them():
    # The read mirrors the zero page READ-only; the write needs WRITE entries, so it faults
    # (do_wp_page -> wp_page_copy) and the zero page is replaced by a new folio.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 dev_write d0 a[0:2] seed=3
        p0 dev_read d0 a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), dev(2, 1, zeros(2)), dev(2, 1),
                   dev(2, 0, patterns(prog, 3, "a", 0, 2)))


def test_device_write_after_fork_breaks_cow_parent_keeps_its_data_child_the_old():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:2] seed=2   # COW: the parent gets its own copies
        p0 read a[0:2]
        p1 read a[0:2]
    """)
    good = [ok(), wrote(2), ok(), ok(), dev(2, 1), cpu(*patterns(prog, 2, "a", 0, 2)),
            cpu(*patterns(prog, 1, "a", 0, 2))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 6, cpu(*patterns(prog, 2, "a", 0, 2))), 6, "pages[0]")


def test_device_write_to_read_only_memory_fails_with_eperm():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 mprotect a[0:2] r
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:2] seed=1   # hmm_vma_fault: write fault without VM_WRITE
    """)
    assert_accepts(prog, ok(), ok(), ok(), err(EPERM))
    assert_rejects(prog, [ok(), ok(), ok(), err(EFAULT)], 3, "errno", "EPERM")


def test_device_write_to_prot_none_memory_fails_with_efault():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 mprotect a[0:1] none
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:1] seed=1
    """)
    assert_accepts(prog, ok(), ok(), ok(), err(EFAULT))


def test_a_failing_device_write_keeps_what_it_wrote_before_the_fault():
    # dmirror_write copies into pages with WRITE entries until the first one without, and only
    # then faults: a[0] is written before the fault on a[1] fails in the read-only VMA.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:1] seed=1
        p0 mprotect a[1:2] r
        p0 dev_write d0 a[0:2] seed=2
        p0 read a[0:2]
    """)
    good = [ok(), ok(), dev(1, 1), ok(), err(EPERM),
            cpu(pattern(prog, 2, "a", 0), zeros(1)[0])]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 5, cpu(pattern(prog, 1, "a", 0), zeros(1)[0])),
                   5, "pages[0]")
