"""mremap as the model states it (reference/remap.py, from 7.2's mm/mremap.c); the same
cases ran on 7.2.13 in tests/test_vm_model_mremap.py."""

import errno

from test_model_support import (
    SEGV, assert_accepts, cpu, dev, err, ok, pattern, patterns, program, snap, wrote, zeros,
)

from reference import check, expected, uapi
from reference.places import Places
from reference.semantics import step
from reference.state import World
from test_model_support import trace

W, R, Z, NONE = uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_ZERO, uapi.PROT_NONE


def final_world(prog) -> World:
    world, places = World.initial(), Places(prog)
    for op in prog.ops:
        ((_, world),) = step(world, op, places)
    return world


def test_a_move_carries_the_pages_and_invalidates_the_old_range():
    prog = program("""
        region a pages=4
        region b pages=4
        p0 map a[0:3]
        p0 write a[0:3] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:3]
        p0 mremap a[0:2] b[0:2]
        p0 read b[0:2]
        p0 read a[0:2]
        p0 dev_read d0 a[2:3]
        p0 snapshot d0 b[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 3)
    # the bytes keep the pattern written at a[]; a[2] lost its entry by the +1 quirk of
    # move_page_tables' MMU_NOTIFY_UNMAP over a[0:2]
    assert_accepts(prog, ok(), wrote(3), ok(), dev(3, 1, data), ok(), cpu(*data[:2]),
                   cpu(SEGV, SEGV), dev(1, 1, data[2:]), snap(W, W))


def test_errno_cases():
    prog = program("""
        region a pages=8
        p0 mremap a[0:1] 2
        p0 map a[0:2]
        p0 mremap a[0:2] a[1:3]
        p0 mremap a[0:2] a[4:5] dontunmap
        p0 map a[2:3]
        p0 mprotect a[2:3] r
        p0 mremap a[0:2] 3
        p0 mremap a[1:2] 2
        p0 mremap a[5:6] a[6:7]
    """)
    assert_accepts(prog, err(errno.EFAULT), ok(), err(errno.EINVAL), err(errno.EINVAL), ok(),
                   ok(), err(errno.ENOMEM), err(errno.ENOMEM), err(errno.EFAULT))


def test_several_vmas_move_together_with_their_gaps():
    prog = program("""
        region a pages=8
        region b pages=8
        p0 map a[0:2]
        p0 map a[3:5]
        p0 mprotect a[1:2] r
        p0 map b[2:3]
        p0 write b[2:3] seed=9
        p0 mremap a[0:6] b[0:6]
        p0 read b[0:6]
    """)
    keep = pattern(prog, 9, "b", 2)
    # the gap a[2] lands on b[2], which stays mapped (only the pieces' targets are unmapped)
    assert_accepts(prog, ok(), ok(), ok(), ok(), wrote(1), ok(),
                   cpu(*zeros(2), keep, *zeros(2), SEGV))
    a_start, a_end = Places(prog).vpns(prog.ops[5].range)
    assert not any(v.start < a_end and a_start < v.end for v in final_world(prog).mms[1].vmas)


def test_dontunmap_leaves_the_source_mapped_and_empty():
    prog = program("""
        region a pages=2
        region b pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 mremap a[0:2] b[0:2] dontunmap
        p0 read a[0:2]
        p0 read b[0:2]
    """)
    assert_accepts(prog, ok(), wrote(2), ok(), cpu(*zeros(2)), cpu(*patterns(prog, 1, "a", 0, 2)))
    source = final_world(prog).mms[1].vmas[0]
    assert source.anon is None and source.shift == 0    # unlink_anon_vmas, pgoff reset


def test_a_moved_vma_keeps_its_pgoff_and_does_not_merge_with_a_fresh_mmap():
    prog = program("""
        region a pages=2
        region b pages=4
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 mremap a[0:2] b[0:2]
        p0 map b[2:4]
    """)
    assert len(final_world(prog).mms[1].vmas) == 2
    # an unfaulted VMA takes the pgoff of its new address and merges
    prog = program("""
        region a pages=2
        region b pages=4
        p0 map a[0:2]
        p0 mremap a[0:2] b[0:2]
        p0 map b[2:4]
    """)
    assert len(final_world(prog).mms[1].vmas) == 1


def test_growing_in_place_merges_with_the_next_vma():
    prog = program("""
        region a pages=4
        p0 map a[0:1]
        p0 map a[2:4]
        p0 mremap a[0:1] 2
    """)
    assert [(v.end - v.start) for v in final_world(prog).mms[1].vmas] == [4]


def test_mremap_is_refused_before_7_2():
    prog = program("region a pages=2\np0 map a[0:1]\np0 mremap a[0:1] 2\n")
    verdict = check(prog, trace(ok(), ok(), release="6.12.117"))
    assert verdict.unmodelled_op == "mremap on kernels before 7.2"
    assert len(expected(prog, "6.1.192")) == 1
