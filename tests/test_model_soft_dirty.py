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


def test_clear_soft_dirty_is_refused_before_7_2():
    prog = program("region a pages=1\np0 map a[0:1]\np0 clear_soft_dirty\n")
    verdict = check(prog, trace(ok(), ok(), release="6.12.117"))
    assert verdict.unmodelled_op == "clear_soft_dirty on kernels before 7.2"
