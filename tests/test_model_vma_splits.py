"""VMA splits and merges fire an MMU notifier over a whole 2 MiB (vma_adjust_trans_huge), and
munmap of a range without VMAs fires none. Every trace here is what 6.1.192, 6.12.117 and
7.2.13 reported for the program (TCG guest)."""

import pytest

from test_model_support import (
    assert_rejects, dev, ok, pattern, program, replaced, snap, trace, wrote, zeros,
)

from reference import check, uapi

RELEASES = ("7.2.13", "6.12.117", "6.1.192")


def accepted_everywhere(prog, *results):
    for release in RELEASES:
        verdict = check(prog, trace(*results, release=release))
        assert verdict.ok, f"{release}: {verdict}"


def test_munmap_split_erases_the_whole_aligned_2mib():
    # __split_vma at d[537] (and d[538]) -> vma_adjust_trans_huge -> split_huge_pmd_if_needed:
    # the VMA d[512:1024] covers the aligned 2 MiB around d[537], mm_find_pmd finds the
    # (not huge) PMD, __split_huge_pmd fires MMU_NOTIFY_CLEAR over d[512:1024].
    prog = program("""
        region d pages=1024
        p0 map d[512:1024]
        p0 open a dmirror0
        p0 dev_write a d[540:541] seed=1
        p0 munmap d[537:538]
        p0 dev_write a d[540:541] seed=1   # d[540] was erased: faults again
    """)
    good = [ok(), ok(), dev(1, 1), ok(), dev(1, 1)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 4, dev(1, 0)), 4, "faults", "1")


def test_mprotect_split_erases_the_whole_aligned_2mib():
    prog = program("""
        region d pages=1024
        p0 map d[512:1024]
        p0 open a dmirror0
        p0 dev_write a d[540:541] seed=1
        p0 mprotect d[537:538] r
        p0 dev_write a d[540:541] seed=1
    """)
    good = [ok(), ok(), dev(1, 1), ok(), dev(1, 1)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 4, dev(1, 0)), 4, "faults", "1")


@pytest.mark.parametrize("text", [
    # Another 2 MiB of the same VMA: only [0, 512) is invalidated.
    """
        region x pages=2048
        p0 map x[0:2048]
        p0 open a dmirror0
        p0 dev_write a x[1500:1501] seed=1
        p0 munmap x[10:11]
        p0 dev_write a x[1500:1501] seed=1
    """,
    # A VMA that does not cover the aligned 2 MiB around the split: range_in_vma is false.
    """
        region e pages=300
        p0 map e[0:300]
        p0 open a dmirror0
        p0 dev_write a e[100:101] seed=1
        p0 munmap e[50:51]
        p0 dev_write a e[100:101] seed=1
    """,
])
def test_a_split_leaves_entries_outside_a_covered_2mib(text):
    prog = program(text)
    good = [ok(), ok(), dev(1, 1), ok(), dev(1, 0)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 4, dev(1, 1)), 4, "faults", "0")


def test_munmap_with_two_splits_checks_the_second_against_the_split_vma():
    # Split at d[600] in d[0:2048] clears d[512:1024] (+ d[1024]); split at d[1400] in
    # d[600:2048] clears d[1024:1536] and, by the dmirror_do_update quirk, d[1536].
    prog = program("""
        region d pages=2048
        p0 map d[0:2048]
        p0 open a dmirror0
        p0 dev_write a d[520:521] seed=1
        p0 dev_write a d[1536:1538] seed=1
        p0 munmap d[600:1400]
        p0 dev_read a d[520:521]
        p0 dev_read a d[1537:1538]
        p0 dev_read a d[1536:1537]
    """)
    good = [ok(), ok(), dev(1, 1), dev(2, 1), ok(),
            dev(1, 1, [pattern(prog, 1, "d", 520)]),
            dev(1, 0, [pattern(prog, 1, "d", 1537)]),
            dev(1, 1, [pattern(prog, 1, "d", 1536)])]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 5, dev(1, 0, [pattern(prog, 1, "d", 520)])), 5,
                   "faults", "1")


def test_mprotect_merge_into_prev_splits_the_old_middle_at_the_new_boundary():
    # vma_merge_existing_range, merge_left over part of d[512:1024]: commit_merge ->
    # vma_adjust_trans_huge(prev, .., end=d[530], middle) checks the old middle at d[530].
    prog = program("""
        region d pages=1024
        p0 map d[0:1024]
        p0 write d[0:1] seed=1
        p0 mprotect d[0:512] r
        p0 open a dmirror0
        p0 dev_write a d[600:601] seed=1
        p0 dev_write a d[1000:1001] seed=1
        p0 mprotect d[512:530] r
        p0 dev_write a d[600:601] seed=1
        p0 dev_write a d[1000:1001] seed=1
    """)
    good = [ok(), wrote(1), ok(), ok(), dev(1, 1), dev(1, 1), ok(), dev(1, 1), dev(1, 1)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 7, dev(1, 0)), 7, "faults", "1")


def test_mprotect_merge_into_next_splits_the_old_middle_at_the_new_boundary():
    # merge_right over the end of d[0:1024]: __adjust_next_start, vma_adjust_trans_huge(
    # middle, .., start=d[650]) and d[0:1024] covers d[512:1024]. d[100] stays mirrored.
    prog = program("""
        region d pages=1536
        p0 map d[0:1536]
        p0 write d[0:1] seed=1
        p0 mprotect d[1024:1536] r
        p0 open a dmirror0
        p0 dev_write a d[100:101] seed=1
        p0 dev_write a d[600:601] seed=1
        p0 mprotect d[650:1024] r
        p0 dev_write a d[100:101] seed=1
        p0 dev_write a d[600:601] seed=1
        p0 snapshot a d[1023:1025]
    """)
    good = [ok(), wrote(1), ok(), ok(), dev(1, 1), dev(1, 1), ok(), dev(1, 0), dev(1, 1),
            snap(uapi.PROT_NONE, uapi.PROT_NONE)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 8, dev(1, 0)), 8, "faults", "1")


def test_merges_that_move_no_boundary_inside_a_vma_fire_nothing():
    # mmap next to d[0:600] (vma_expand of prev) and mprotect joining three VMAs (merge_both)
    # only grow a VMA over addresses it did not cover: no split notifier.
    grow = program("""
        region d pages=1024
        p0 map d[0:600]
        p0 open a dmirror0
        p0 dev_write a d[520:521] seed=1
        p0 map d[600:1024]
        p0 dev_write a d[520:521] seed=1
    """)
    accepted_everywhere(grow, ok(), ok(), dev(1, 1), ok(), dev(1, 0))
    both = program("""
        region d pages=1024
        p0 map d[0:1024]
        p0 write d[0:1] seed=1
        p0 mprotect d[300:700] r
        p0 open a dmirror0
        p0 dev_write a d[100:101] seed=1
        p0 dev_write a d[800:801] seed=1
        p0 dev_read a d[520:521]
        p0 mprotect d[300:700] rw      # change_protection still clears d[300:700] (+ d[700])
        p0 dev_write a d[100:101] seed=1
        p0 dev_write a d[800:801] seed=1
        p0 dev_read a d[520:521]
    """)
    accepted_everywhere(both, ok(), wrote(1), ok(), ok(), dev(1, 1), dev(1, 1),
                        dev(1, 1, zeros(1)), ok(), dev(1, 0), dev(1, 0), dev(1, 1, zeros(1)))


def test_munmap_of_a_range_without_vmas_fires_no_notifier():
    # do_vmi_munmap returns when vma_find() finds nothing, so the page just past the range
    # keeps its entry; once a VMA lies in the range, unmap_vmas invalidates all of it and
    # the quirk erases a[2].
    prog = program("""
        region a pages=8
        p0 map a[2:4]
        p0 open f dmirror0
        p0 dev_write f a[2:3] seed=1
        p0 munmap a[0:2]
        p0 dev_write f a[2:3] seed=1
        p0 map a[1:2]
        p0 munmap a[0:2]
        p0 dev_write f a[2:3] seed=1
    """)
    good = [ok(), ok(), dev(1, 1), ok(), dev(1, 0), ok(), ok(), dev(1, 1)]
    accepted_everywhere(prog, *good)
    assert_rejects(prog, replaced(good, 4, dev(1, 1)), 4, "faults", "0")
