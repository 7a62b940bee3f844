"""VMA flags set by madvise and mlock, as the model states them (reference/vma.py modify,
semantics._madvise_flag, _mlock), each checked against 7.2.13, 6.12.117 and 6.1.192 by
tests/test_vm_model_vma_flags.py."""

import errno

from test_model_support import (
    SEGV, assert_accepts, cpu, dev, err, ok, patterns, program, snap, wrote, zeros,
)

from reference import expected, uapi
from reference.places import Places
from reference.semantics import step
from reference.state import World

W, R, Z = uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_ZERO


def final_world(prog) -> World:
    world, places = World.initial(), Places(prog)
    for op in prog.ops:
        ((_, world),) = step(world, op, places)
    return world


def test_dontfork_keeps_the_vma_from_the_child_and_wipeonfork_empties_it():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:3] seed=1
        p0 madvise a[0:1] dontfork
        p0 madvise a[1:2] wipeonfork
        p0 fork p1
        p1 read a[0:3]
    """)
    data = patterns(prog, 1, "a", 0, 3)
    assert_accepts(prog, ok(), wrote(3), ok(), ok(), ok(), cpu(SEGV, zeros(1)[0], data[2]))


def test_pages_of_a_vma_not_copied_at_fork_stay_exclusive_and_mirrored():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 madvise a[0:2] wipeonfork
        p0 dev_write d0 a[0:2] seed=2
        p0 fork p1
        p0 dev_write d0 a[0:2] seed=3
    """)
    # copy_page_range is not called for the VMA: no MMU notifier, the PTEs stay writable
    assert_accepts(prog, ok(), wrote(2), ok(), ok(), dev(2, 1), ok(), dev(2, 0))


def test_flag_advice_on_part_of_a_vma_splits_it_and_the_split_empties_the_2m_range():
    prog = program("""
        region h pages=600
        p0 map h[0:600]
        p0 write h[0:600] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 h[0:600]
        p0 madvise h[100:101] mergeable
        p0 dev_read d0 h[0:600]
        p0 madvise h[100:101] unmergeable
        p0 dev_read d0 h[0:600]
    """)
    allowed = expected(prog)
    assert allowed[5][0].faults == (1,)       # __split_vma -> split_huge_pmd_if_needed
    assert allowed[7][0].faults == (0,)       # merging the three back moves no boundary
    assert len(final_world(prog).mms[1].vmas) == 1


def test_advice_that_changes_no_flag_does_nothing():
    prog = program("""
        region h pages=600
        p0 map h[0:600]
        p0 write h[0:600] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 h[0:600]
        p0 madvise h[100:101] dofork
        p0 madvise h[100:101] nohugepage
        p0 madvise h[100:101] hugepage
        p0 dev_read d0 h[0:600]
    """)
    allowed = expected(prog)
    assert allowed[7][0].faults == (1,)   # only nohugepage split the VMA, once


def test_a_flag_keeps_vmas_apart_and_mmap_does_not_merge_into_them():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 madvise a[0:2] dontfork
        p0 map a[2:4]
        p0 madvise a[2:4] dontfork
    """)
    world = final_world(prog)
    assert [(v.end - v.start) for v in world.mms[1].vmas] == [4]   # merged once equal


def test_mlock_populates_with_write_faults_and_locked_vmas_refuse_reclaim():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 open d0 dmirror0
        p0 mlock a[0:2]
        p0 snapshot d0 a[0:4]
        p0 madvise a[0:4] pageout
        p0 madvise a[0:4] free
        p0 madvise a[2:4] cold
        p0 munlock a[0:4]
        p0 madvise a[0:4] dontneed
    """)
    assert_accepts(prog, ok(), ok(), ok(), snap(W, W, 0, 0), err(errno.EINVAL),
                   err(errno.EINVAL), ok(), ok(), ok())


def test_mlock_over_a_hole_or_prot_none_is_enomem():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 mlock a[0:4]
        p0 mprotect a[1:2] none
        p0 mlock a[0:2]
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:2]
        p0 mprotect a[1:2] r
        p0 mlock a[0:2]
        p0 snapshot d0 a[0:2]
    """)
    # apply_vma_lock_flags stops at the hole with -ENOMEM, nothing populated; PROT_NONE:
    # __mm_populate gets -EFAULT -> -ENOMEM after populating a[0]; a read-only locked VMA
    # is populated with read faults (the zero page)
    assert_accepts(prog, ok(), err(errno.ENOMEM), ok(), err(errno.ENOMEM), ok(),
                   snap(W, uapi.PROT_ERROR), ok(), ok(), snap(W, Z | R))


def test_mprotect_writable_on_a_locked_vma_breaks_cow_at_once():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 read a[0:1]
        p0 mprotect a[0:1] r
        p0 mlock a[0:1]
        p0 open d0 dmirror0
        p0 mprotect a[0:1] rw
        p0 snapshot d0 a[0:1]
    """)
    # mprotect_fixup: "Private VM_LOCKED VMA becoming writable: trigger COW"
    assert_accepts(prog, ok(), cpu(*zeros(1)), ok(), ok(), ok(), ok(), snap(W))


def test_the_child_does_not_inherit_vm_locked():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 mlock a[0:1]
        p0 fork p1
        p1 madvise a[0:1] pageout
        p0 madvise a[0:1] pageout
    """)
    assert_accepts(prog, ok(), ok(), ok(), ok(), err(errno.EINVAL))
