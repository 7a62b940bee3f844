"""HMM_DMIRROR_READ: dmirror_read faults in what is missing from the mirror, then copies."""

from test_model_support import (
    EFAULT, assert_accepts, assert_rejects, check, dev, err, ok, pattern, patterns, program,
    replaced, snap, trace, wrote, zeros,
)

from reference import uapi

ZERO_READ = uapi.PROT_ZERO | uapi.PROT_READ


def test_device_read_of_untouched_memory_reads_zeros_with_one_fault():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:4]   # do_anonymous_page maps the zero page for the read fault
        p0 snapshot d0 a[0:4]
    """)
    good = [ok(), ok(), dev(4, 1, zeros(4)), snap(*[ZERO_READ] * 4)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 2, dev(4, 0, zeros(4))), 2, "faults", "1")
    assert_rejects(prog, replaced(good, 3, snap(*[uapi.PROT_WRITE] * 4)), 3, "snapshot[0]",
                   "0x11 (ZERO|READ)")


def test_device_read_after_cpu_write_sees_the_pattern_and_write_tags_the_entries():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:3] seed=7
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:3]
        p0 dev_write d0 a[0:3] seed=8   # entries are WRITE-tagged: no fault needed
    """)
    good = [ok(), wrote(3), ok(), dev(3, 1, patterns(prog, 7, "a", 0, 3)), dev(3, 0)]
    assert_accepts(prog, *good)
    stale = dev(3, 1, (pattern(prog, 7, "a", 0), pattern(prog, 6, "a", 1),
                       pattern(prog, 7, "a", 2)))
    assert_rejects(prog, replaced(good, 3, stale), 3, "pages[1]")


def test_second_device_read_without_invalidation_needs_no_fault():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 dev_read d0 a[0:2]
    """)
    good = [ok(), ok(), dev(2, 1, zeros(2)), dev(2, 0, zeros(2))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 3, dev(2, 1, zeros(2))), 3, "faults", "0")


def test_mprotect_invalidates_the_mirror_so_the_next_read_faults():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 mprotect a[0:2] r   # change_protection fires MMU_NOTIFY_PROTECTION_VMA
        p0 dev_read d0 a[0:2]
        p0 snapshot d0 a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 2)
    good = [ok(), wrote(2), ok(), dev(2, 1, data), ok(), dev(2, 1, data),
            snap(uapi.PROT_READ, uapi.PROT_READ)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 5, dev(2, 0, data)), 5, "faults", "1")


def test_mprotect_to_the_same_protection_changes_nothing_and_invalidates_nothing():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 mprotect a[0:2] rw   # mprotect_fixup: flags unchanged -> no change_protection
        p0 dev_read d0 a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), dev(2, 1, zeros(2)), ok(), dev(2, 0, zeros(2)))


def test_device_read_of_prot_none_memory_fails_with_efault():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 mprotect a[0:2] none
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]   # hmm_vma_walk_test: no VM_READ and a fault is required
    """)
    assert_accepts(prog, ok(), ok(), ok(), err(EFAULT))
    assert_rejects(prog, [ok(), ok(), ok(), dev(2, 1, zeros(2))], 3, "errno", "EFAULT")


def test_device_read_of_unmapped_memory_fails_with_efault_and_reports_nothing():
    prog = program("""
        region a pages=2
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]   # hmm_vma_walk_hole without a VMA
    """)
    assert_accepts(prog, ok(), err(EFAULT))
    verdict = assert_rejects(prog, [ok(), dev(2, 1, zeros(2))], 1, "errno", "EFAULT")
    assert {d.field for d in verdict.at(1)} == {"errno", "cpages", "faults", "pages"}


def test_a_failing_read_keeps_the_chunks_mirrored_before_the_failure():
    # dmirror_fault mirrors 32 pages at a time: pages 0..31 are stored before the walk of the
    # second chunk hits the hole at page 40, and the CPU keeps the zero pages it faulted in.
    prog = program("""
        region a pages=48
        p0 map a[0:40]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:48]
        p0 dev_read d0 a[0:32]
        p0 snapshot d0 a[30:42]
    """)
    after = [ZERO_READ] * 10 + [uapi.PROT_ERROR] * 2
    assert_accepts(prog, ok(), ok(), err(EFAULT), dev(32, 0, zeros(32)), snap(*after))
    assert_rejects(prog, [ok(), ok(), err(EFAULT), dev(32, 1, zeros(32)), snap(*after)],
                   3, "faults", "0")


def test_a_device_read_through_an_inherited_fd_reads_the_parent():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 fork p1
        p1 write a[0:1] seed=2
        p1 dev_read d0 a[0:1]   # d0 mirrors p0's mm, whoever issues the ioctl
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), wrote(1),
                   dev(1, 1, [pattern(prog, 1, "a", 0)]))


# docs/findings.md #4: the stale entry a second dmirror of the same device leaves behind
STALE_ENTRIES = """
    region a pages=2
    p0 map a[0:2]
    p0 open d0 dmirror1
    p0 open d1 dmirror1
    p0 write a[0:2] seed=1
    p0 migrate_to_dev d0 a[0:2]   # d0's entries point at the device pages' backing pages
    p0 migrate_to_sys d1 a[0:2]   # d0 ignores the notifier: its own device migrates
    p0 dev_read d0 a[0:2]         # through the stale entries: no fault, freed bytes
"""


def test_a_device_read_through_a_stale_entry_copies_the_freed_page_without_faulting():
    prog = program(STALE_ENTRIES)
    data = patterns(prog, 1, "a", 0, 2)
    freed_bytes = patterns(prog, 9, "a", 0, 2)  # whatever the allocator's next user wrote
    good = [ok(), ok(), ok(), wrote(2), dev(2, 0, data), dev(2, 0), dev(2, 0, freed_bytes)]
    assert_accepts(prog, *good)
    # a fixed kernel invalidates d0's entries: the read faults and copies the CPU page
    assert_rejects(prog, replaced(good, 6, dev(2, 1, data)), 6, "faults", "0")


def test_a_device_write_through_a_stale_entry_is_memory_corruption_the_model_refuses():
    prog = program(STALE_ENTRIES + "    p0 dev_write d0 a[0:2] seed=2\n")
    verdict = check(prog, trace(ok(), ok(), ok(), wrote(2), dev(2, 0, patterns(prog, 1, "a", 0, 2)),
                                dev(2, 0), dev(2, 0, zeros(2)), dev(2, 0)))
    assert verdict.ok and verdict.unmodelled_from == 7
    assert verdict.unmodelled_op == "a device write through the entry of a freed page"
