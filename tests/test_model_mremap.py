"""mremap as the model states it (reference/remap.py, from 7.2's mm/mremap.c); the same
cases ran on 7.2.13 in tests/test_vm_model_mremap.py."""

import errno

from test_model_support import (
    SEGV, assert_accepts, cpu, dev, err, ok, pattern, patterns, program, snap, wrote, zeros,
)

from reference import check, expected, uapi
from reference.profile import profile_for
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


def final_vmas(prog, release: str) -> list[tuple[int, int]]:
    world, places = World.initial(profile_for(release)), Places(prog)
    for op in prog.ops:
        ((_, world),) = step(world, op, places)
    return [(v.start, v.end) for v in world.mms[1].vmas]


def errnos(prog, release: str) -> list[int]:
    return [allowed[0].errno[0] for allowed in expected(prog, release)]


OLDER = ("6.12.117", "6.1.192")


def test_older_kernels_look_the_vma_up_before_checking_the_target_for_overlap():
    # SYSCALL_DEFINE5(mremap): vma_lookup -> -EFAULT, then mremap_to's overlap check;
    # 7.2's check_mremap_params rejects the overlap before looking at any VMA.
    prog = program("region a pages=4\np0 mremap a[0:2] a[1:3]\n")
    assert errnos(prog, "7.2.13") == [errno.EINVAL]
    for release in OLDER:
        assert errnos(prog, release) == [errno.EFAULT]


def test_older_kernels_move_one_vma_and_unmap_the_target_before_failing():
    # a same-size move over two VMAs: 7.2's remap_move moves both; 6.x mremap_to unmaps the
    # target, then vma_to_resize finds the range past the first VMA: -EFAULT.
    prog = program("""
        region a pages=4
        region b pages=4
        p0 map a[0:2]
        p0 map a[2:4]
        p0 mprotect a[2:4] r
        p0 map b[0:4]
        p0 write b[0:4] seed=1
        p0 mremap a[0:4] b[0:4]
        p0 read b[0:4]
    """)
    assert errnos(prog, "7.2.13")[5:] == [0, 0]
    assert expected(prog, "7.2.13")[6][0].pages == zeros(4)
    for release in OLDER:
        allowed = expected(prog, release)
        assert allowed[5][0].errno == (errno.EFAULT,)
        assert allowed[6][0].pages == (SEGV,) * 4      # the target went first


def test_older_kernels_unmap_target_and_tail_before_a_resizing_move_fails():
    # mremap_to: do_munmap(new_addr), do_munmap(tail) for a shrink, then vma_to_resize
    prog = program("""
        region a pages=8
        region b pages=4
        p0 map a[0:2]
        p0 map a[2:4]
        p0 mprotect a[2:4] r
        p0 write a[0:2] seed=1
        p0 map b[0:4]
        p0 mremap a[0:4] b[0:3]
        p0 read a[0:4]
        p0 read b[0:4]
    """)
    data = patterns(prog, 1, "a", 0, 2)
    # 7.2: check_prep_vma fails first, nothing unmapped
    assert errnos(prog, "7.2.13")[5] == errno.EFAULT
    assert expected(prog, "7.2.13")[6][0].pages == (*data, *zeros(2))
    assert expected(prog, "7.2.13")[7][0].pages == zeros(4)
    for release in OLDER:
        allowed = expected(prog, release)
        assert allowed[5][0].errno == (errno.EFAULT,)
        assert allowed[6][0].pages == (*data, *zeros(1), SEGV)   # the tail a[3] went
        assert allowed[7][0].pages == (SEGV, SEGV, SEGV, *zeros(1))


def test_moves_within_one_vma_are_the_same_on_every_kernel():
    prog = program("""
        region a pages=8
        region b pages=6
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 mremap a[0:3] b[1:5]
        p0 mremap b[1:3] b[4:6] dontunmap
        p0 mremap a[3:4] 3
        p0 read b[0:6]
        p0 read a[0:4]
    """)
    results = [expected(prog, release) for release in ("7.2.13", *OLDER)]
    assert results[0] == results[1] == results[2]


def test_6_1_does_not_merge_an_unfaulted_copy_next_to_its_kept_source():
    # 6.1 copy_vma: "simply do not attempt to merge in that case"; 6.12/7.2 keep only the
    # source out of the candidates and merge the copy with the VMA behind it.
    prog = program("""
        region a pages=8
        p0 map a[0:2]
        p0 map a[4:6]
        p0 mremap a[0:2] a[2:4] dontunmap
    """)
    a = Places(prog).vpns(prog.ops[0].range)[0]
    assert final_vmas(prog, "6.12.117") == [(a, a + 2), (a + 2, a + 6)]
    assert final_vmas(prog, "7.2.13") == [(a, a + 2), (a + 2, a + 6)]
    assert final_vmas(prog, "6.1.192") == [(a, a + 2), (a + 2, a + 4), (a + 4, a + 6)]


def test_moving_a_whole_page_table_with_soft_dirty_bits_clear_is_refused():
    # move_normal_pmd would carry the PTE table without move_soft_dirty_pte when the
    # target PMD is empty: page tables the model does not keep
    prog = program("""
        region a pages=1024
        region b pages=1024
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 clear_soft_dirty
        p0 mremap a[0:512] b[0:512]
    """)
    verdict = check(prog, trace(ok(), wrote(512), ok(), ok()))
    assert verdict.unmodelled_op == "mremap of a whole 2 MiB page table with soft-dirty bits clear"
    # a move that is not PMD-aligned on both sides sets every moved PTE's bit
    prog = program("""
        region a pages=1024
        region b pages=1024
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 clear_soft_dirty
        p0 mremap a[0:512] b[1:513]
    """)
    assert check(prog, trace(ok(), wrote(512), ok(), ok())).ok
