"""Soft-dirty as the model states it (semantics._clear_soft_dirty, Pte.soft_dirty,
Vma.softdirty, mm.needs_soft_dirty_wp), checked on 7.2.13 by
tests/test_vm_model_soft_dirty.py."""

from test_model_support import dev, ok, program, snap, trace, wrote

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check, expected, uapi

W, R = uapi.PROT_WRITE, uapi.PROT_READ
SD, PRESENT = 1 << 55, 1 << 63


def soft_dirty_bits(allowed):
    return [bool(spec.flags & SD) for spec in allowed.pagemap]


def test_clear_soft_dirty_clears_vmas_and_ptes_and_a_write_fault_sets_the_bit_again():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:2] seed=1
        p0 clear_soft_dirty
        p0 pagemap a[0:3]
        p0 write a[0:1] seed=2
        p0 pagemap a[0:3]
    """)
    allowed = expected(prog)
    assert soft_dirty_bits(allowed[3][0]) == [False, False, False]
    assert soft_dirty_bits(allowed[5][0]) == [True, False, False]


def test_the_mirror_is_emptied_and_pages_are_write_protected():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_write d0 a[0:2] seed=2
        p0 clear_soft_dirty
        p0 snapshot d0 a[0:2]
        p0 mprotect a[0:2] r
        p0 mprotect a[0:2] rw
        p0 snapshot d0 a[0:2]
        p0 dev_write d0 a[0:2] seed=3
        p0 snapshot d0 a[0:2]
    """)
    # MMU_NOTIFY_SOFT_DIRTY over everything; mprotect may not make a PTE writable that is
    # not soft-dirty (pte_needs_soft_dirty_wp); the device's write fault reuses the pages
    verdict = check(prog, trace(ok(), wrote(2), ok(), dev(2, 1), ok(), snap(R, R), ok(), ok(),
                                snap(R, R), dev(2, 1), snap(W, W)))
    assert verdict.ok, str(verdict)


def test_a_device_private_page_comes_back_writable_and_is_not_tracked():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:1]
        p0 clear_soft_dirty
        p0 migrate_to_sys d0 a[0:1]
        p0 snapshot d0 a[0:1]
        p0 write a[0:1] seed=2
        p0 pagemap a[0:1]
    """)
    allowed = expected(prog)
    assert allowed[6][0].snapshot == bytes([W])     # remove_migration_pte: pte_mkwrite
    assert soft_dirty_bits(allowed[8][0]) == [False]   # docs/findings.md #8


def test_mmap_next_to_a_cleared_vma_makes_the_merged_vma_soft_dirty():
    prog = program("""
        region a pages=2
        p0 map a[0:1]
        p0 clear_soft_dirty
        p0 map a[1:2]
        p0 pagemap a[0:2]
    """)
    assert soft_dirty_bits(expected(prog)[3][0]) == [True, True]


def test_clear_soft_dirty_is_the_same_code_on_older_kernels():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 clear_soft_dirty
        p0 pagemap a[0:3]
        p0 snapshot d0 a[0:2]
        p0 write a[0:1] seed=2
        p0 pagemap a[0:3]
    """)
    for release in ("6.12.117", "6.1.192"):
        allowed = expected(prog, release)
        assert soft_dirty_bits(allowed[5][0]) == [False, False, False]
        assert allowed[6][0].snapshot == bytes([R, R])
        assert soft_dirty_bits(allowed[8][0]) == [True, False, False]


def test_a_merge_keeps_soft_dirty_only_on_7_2():
    # 7.2: VMA_STICKY_FLAGS. 6.x: the merge keeps the surviving VMA's flags and
    # mprotect_fixup's vm_flags_reset gives it those of a[0], the VMA mprotect changed.
    prog = program("""
        region a pages=2
        p0 map a[0:1]
        p0 mprotect a[0:1] r
        p0 clear_soft_dirty
        p0 map a[1:2]
        p0 mprotect a[0:1] rw
        p0 pagemap a[0:2]
    """)
    assert soft_dirty_bits(expected(prog)[5][0]) == [True, True]
    for release in ("6.12.117", "6.1.192"):
        assert soft_dirty_bits(expected(prog, release)[5][0]) == [False, False]


def test_older_kernels_restore_a_writable_exclusive_entry_dirty_and_writable():
    # 6.x restore_exclusive_pte: maybe_mkwrite(pte_mkdirty(pte)) for a writable entry, and
    # pte_mkdirty sets soft-dirty on x86; 7.2 asks can_change_pte_writable, which refuses
    # while soft-dirty tracking wants a write fault.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 clear_soft_dirty
        p0 read a[0:1]
        p0 pagemap a[0:1]
        p0 snapshot d0 a[0:1]
    """)
    allowed = expected(prog)
    assert soft_dirty_bits(allowed[5][0]) == [False]
    assert allowed[6][0].snapshot == bytes([R])
    for release in ("6.12.117", "6.1.192"):
        allowed = expected(prog, release)
        assert soft_dirty_bits(allowed[5][0]) == [True]
        assert allowed[6][0].snapshot == bytes([W])


def test_6_1_marks_a_dirty_page_soft_dirty_when_it_migrates():
    # 6.1 remove_migration_pte: pte_mkdirty after the soft-dirty bit was taken from the
    # migration entry; 6.12 and 7.2 take the bit from the entry last.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 clear_soft_dirty
        p0 move_pages a[0:1] 1
        p0 pagemap a[0:1]
    """)
    assert soft_dirty_bits(expected(prog)[4][0]) == [False]
    assert soft_dirty_bits(expected(prog, "6.12.117")[4][0]) == [False]
    assert soft_dirty_bits(expected(prog, "6.1.192")[4][0]) == [True]


def test_6_1_compaction_may_or_may_not_mark_a_dirty_page_soft_dirty():
    # remove_migration_pte's pte_mkdirty: only if compaction chose to move the page
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 clear_soft_dirty
        p0 compact
        p0 pagemap a[0:1]
    """)
    assert sorted(soft_dirty_bits(e) for e in expected(prog, "6.1.192")[4]) == [[False], [True]]
    assert [soft_dirty_bits(e) for e in expected(prog, "6.12.117")[4]] == [[False]]
