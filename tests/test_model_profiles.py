"""Version profiles: each difference was read in the 6.1.192 / 6.12.117 / 7.2.13 sources."""

import pytest
from test_model_support import (
    EBUSY, EFAULT, EPERM, cpu, dev, err, ok, patterns, program, snap, trace, wrote, zeros,
)

from reference import check, profile_for, uapi

ZERO_READ = uapi.PROT_ZERO | uapi.PROT_READ


def accepts(prog, release, *results):
    verdict = check(prog, trace(*results, release=release))
    assert verdict.ok, str(verdict)


def rejects(prog, release, *results):
    assert not check(prog, trace(*results, release=release)).ok


@pytest.mark.parametrize("release, name", [
    ("7.2.13", "newest"), ("7.3.0", "newest"), ("6.12.117", "6.12"), ("7.1.4", "6.12"),
    ("6.1.192", "6.1"), ("5.15.0", "6.1"), ("weird", "newest"),
])
def test_profile_for_a_release(release, name):
    assert profile_for(release).name == name


def test_exclusive_on_read_only_memory_is_efault_in_7_2_and_ebusy_before():
    # 7.2 dmirror_exclusive returns make_device_exclusive's error; 6.x dmirror_exclusive
    # returns -EBUSY whenever make_device_exclusive_range did not take the whole batch.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 mprotect a[0:1] r
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
    """)
    accepts(prog, "7.2.13", ok(), ok(), ok(), err(EFAULT))
    accepts(prog, "6.12.117", ok(), ok(), ok(), err(EBUSY))
    accepts(prog, "6.1.192", ok(), ok(), ok(), err(EBUSY))
    rejects(prog, "6.12.117", ok(), ok(), ok(), err(EFAULT))


def test_a_partial_exclusive_batch_leaves_exclusive_pages_without_atomic_entries_in_6_x():
    prog = program("""
        region a pages=3
        p0 map a[0:2]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:3]
        p0 check_exclusive d0 a[0:2]
        p0 snapshot d0 a[0:2]
    """)
    none2 = snap(uapi.PROT_NONE, uapi.PROT_NONE)
    # 7.2: page by page; a[0] and a[1] are exclusive and ATOMIC in d0.
    accepts(prog, "7.2.13", ok(), ok(), err(EFAULT), err(EPERM), none2)
    # 6.12: the GUP of the batch got 2 of 3 pages, both became device-exclusive, none mapped.
    accepts(prog, "6.12.117", ok(), ok(), err(EBUSY), dev(0, 0), none2)


def test_device_read_failure_keeps_32_page_chunks_in_7_2_and_64_before():
    prog = program("""
        region a pages=80
        p0 map a[0:70]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:80]
        p0 dev_read d0 a[32:64]
    """)
    accepts(prog, "7.2.13", ok(), ok(), err(EFAULT), dev(32, 0, zeros(32)))
    accepts(prog, "6.12.117", ok(), ok(), err(EFAULT), dev(32, 0, zeros(32)))
    prog = program("""
        region a pages=80
        p0 map a[0:40]
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:80]
        p0 dev_read d0 a[0:32]
    """)
    # 7.2: the first 32-page chunk was stored before the chunk that hits the hole.
    accepts(prog, "7.2.13", ok(), ok(), err(EFAULT), dev(32, 0, zeros(32)))
    # 6.12: the first chunk is 64 pages and contains the hole: nothing was stored.
    accepts(prog, "6.12.117", ok(), ok(), err(EFAULT), dev(32, 1, zeros(32)))


def test_restored_exclusive_page_after_mprotect_round_trip():
    # 6.x change_pte_range makes the device-exclusive entry readable, and
    # restore_exclusive_pte then maps it read-only; 7.2 looks at VM_WRITE and
    # PageAnonExclusive and maps it writable.
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 mprotect a[0:1] r
        p0 mprotect a[0:1] rw
        p0 read a[0:1]
        p0 snapshot d0 a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    head = [ok(), wrote(1), ok(), dev(1, 0, data), ok(), ok(), cpu(*data)]
    accepts(prog, "7.2.13", *head, snap(uapi.PROT_WRITE))
    accepts(prog, "6.12.117", *head, snap(uapi.PROT_READ))
    rejects(prog, "6.12.117", *head, snap(uapi.PROT_WRITE))


def test_merging_into_a_vma_without_anon_vma_only_in_7_2():
    # mprotect makes a[0:2] (with an anon_vma) identical to a[2:4] (without one):
    # 7.2 is_mergeable_anon_vma allows it (case 1), 6.x does not. Only the merged VMA has an
    # anon_vma for all four pages, so only then does fork copy the zero page at a[3].
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 write a[0:1] seed=1
        p0 mprotect a[0:2] r
        p0 map a[2:4]
        p0 mprotect a[0:2] rw
        p0 read a[3:4]
        p0 fork p1
        p1 open d1 dmirror0
        p1 snapshot d1 a[3:4]
    """)
    head = [ok(), wrote(1), ok(), ok(), ok(), cpu(*zeros(1)), ok(), ok()]
    accepts(prog, "7.2.13", *head, snap(ZERO_READ))
    accepts(prog, "6.12.117", *head, snap(uapi.PROT_NONE))


def test_6_1_mmap_does_not_join_prev_without_anon_vma_to_next_with_one():
    prog = program("""
        region a pages=3
        p0 map a[0:1]
        p0 map a[2:3]
        p0 write a[2:3] seed=1
        p0 map a[1:2]
        p0 read a[0:1]
        p0 fork p1
        p1 open d1 dmirror0
        p1 snapshot d1 a[0:1]
    """)
    head = [ok(), ok(), wrote(1), ok(), cpu(*zeros(1)), ok(), ok()]
    accepts(prog, "7.2.13", *head, snap(ZERO_READ))
    accepts(prog, "6.12.117", *head, snap(ZERO_READ))
    accepts(prog, "6.1.192", *head, snap(uapi.PROT_NONE))
