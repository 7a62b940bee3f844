"""KSM as the model states it (reference/ksm.py), checked on the real kernels by
tests/test_vm_model_ksm.py: which pages a ksm_merge merges, what a KSM page looks like,
what breaks it, and the sub-cases the model refuses."""

import pytest
from test_model_support import dev, ok, program, snap, trace, wrote

from harness.prog import OpResult
from harness.prog.observation import KPF, KsmScan
from reference import check, expected, uapi
from reference.ksm import KsmSpec

R, W = uapi.PROT_READ, uapi.PROT_WRITE
KSM, ANON, ANON_EXCLUSIVE = KPF["KSM"], KPF["ANON"], 1 << 34

# a[i] and b[i] hold the same bytes: b got a's pages, then a was written again
TWINS = """
    region a pages=2
    region b pages=2
    p0 map a[0:2]
    p0 write a[0:2] seed=1
    p0 mremap a[0:2] b[0:2] dontunmap
    p0 write a[0:2] seed=1
    p0 madvise a[0:2] mergeable
    p0 madvise b[0:2] mergeable
"""


def last(prog):
    """What the model allows for the last op (a single outcome)."""
    allowed = expected(prog)
    assert len(allowed) == len(prog.ops), "the model refused an op"
    (only,) = allowed[-1]
    return only


def records(prog):
    return last(prog).pagemap


def test_identical_pages_merge_into_one_read_only_ksm_page_per_content():
    prog = program(TWINS + """
        p0 ksm_merge
        p0 pagemap a[0:2]
        p0 pagemap b[0:2]
    """)
    allowed = expected(prog)
    assert allowed[6][0].ksm == KsmSpec(3, None, pages_shared=2, pages_sharing=2)
    a, b = allowed[7][0].pagemap, allowed[8][0].pagemap
    for i in range(2):
        # one folio for a[i] and b[i], mapped twice: not PageAnonExclusive, not
        # PM_MMAP_EXCLUSIVE, KPF_KSM
        assert a[i].key == b[i].key and a[i].count == 2
        assert a[i].kflags == ANON | KSM
    assert a[0].key != a[1].key


def test_zero_filled_pages_merge_into_one_ksm_page_not_the_zero_page():
    # ksm_use_zero_pages is off by default: a zero-filled page is a content like another
    prog = program("""
        region z pages=4
        p0 map z[0:4]
        p0 madvise z[0:4] populate_write
        p0 madvise z[0:4] mergeable
        p0 ksm_merge
        p0 pagemap z[0:4]
    """)
    assert expected(prog)[3][0].ksm == KsmSpec(3, None, 1, 3)
    pages = records(prog)
    assert len({p.key for p in pages}) == 1 and pages[0].count == 4


def test_a_page_alone_with_its_content_and_pages_ksmd_does_not_scan_stay_as_they_are():
    prog = program("""
        region a pages=5
        region b pages=1
        p0 map a[0:5]
        p0 write a[0:1] seed=1
        p0 read a[1:2]
        p0 madvise a[2:5] populate_write
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[3:4]
        p0 exclusive d0 a[4:5]
        p0 map b[0:1]
        p0 madvise b[0:1] populate_write
        p0 madvise a[0:5] mergeable
        p0 ksm_merge
        p0 pagemap a[0:5]
    """)
    # a[0] has a content of its own, a[1] maps the zero page, a[3] is device-private and
    # a[4] device-exclusive (not pte_present), b[0] is zero-filled like a[2] but its VMA is
    # not VM_MERGEABLE: nothing merges
    assert expected(prog)[10][0].ksm == KsmSpec(3, None, 0, 0)
    assert all(not (page.kflags or 0) & KSM for page in records(prog))


def test_merging_invalidates_each_page_that_changed_folio_and_the_next():
    prog = program(TWINS + """
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:2]
        p0 dev_read d0 b[0:2]
        p0 ksm_merge
        p0 snapshot d0 a[0:2]
        p0 dev_read d0 a[0:2]
        p0 dev_read d0 b[0:2]
    """)
    mirrored = dev(2, 1, last(program(TWINS + "p0 read a[0:2]")).pages)
    twins = dev(2, 1, last(program(TWINS + "p0 read b[0:2]")).pages)
    merged = OpResult(ksm=KsmScan(3, 2, 2))
    verdict = check(prog, trace(ok(), wrote(2), ok(), wrote(2), ok(), ok(), ok(),
                                mirrored, twins, merged, snap(R, R), mirrored, twins))
    assert verdict.ok, str(verdict)


def test_a_write_copies_a_ksm_page_even_when_it_is_mapped_once():
    prog = program("""
        region z pages=2
        p0 map z[0:2]
        p0 madvise z[0:2] populate_write
        p0 madvise z[0:2] mergeable
        p0 ksm_merge
        p0 munmap z[1:2]
        p0 open d0 dmirror0
        p0 dev_read d0 z[0:1]
        p0 write z[0:1] seed=1
        p0 dev_read d0 z[0:1]
        p0 pagemap z[0:1]
    """)
    allowed = expected(prog)
    # wp_can_reuse_anon_folio never reuses a KSM folio: wp_page_copy, MMU_NOTIFY_CLEAR
    assert allowed[8][0].faults == (1,)
    (page,) = allowed[9][0].pagemap
    assert page.count == 1 and page.kflags == ANON | ANON_EXCLUSIVE


def test_unmergeable_unshares_each_ksm_page_into_a_read_only_exclusive_copy():
    prog = program("""
        region z pages=3
        p0 map z[0:3]
        p0 madvise z[0:3] populate_write
        p0 madvise z[0:3] mergeable
        p0 ksm_merge
        p0 open d0 dmirror0
        p0 madvise z[0:1] unmergeable
        p0 snapshot d0 z[0:3]
        p0 dev_write d0 z[0:1] seed=1
        p0 pagemap z[0:3]
    """)
    allowed = expected(prog)
    # break_ksm's FAULT_FLAG_UNSHARE: a copy mapped read-only; the write reuses it
    assert allowed[6][0].snapshot == bytes((R, R, R))
    assert allowed[7][0].faults == (1,)
    pages = allowed[8][0].pagemap
    assert pages[0].count == 1 and pages[0].kflags == ANON | ANON_EXCLUSIVE
    assert pages[1].key == pages[2].key and pages[1].count == 2


@pytest.mark.parametrize("text, scans", [
    # ksmd_should_run(): no mm_slot at all
    ("p0 ksm_merge", KsmSpec(0, 0, 0, 0)),
    # the mm is registered but has no VM_MERGEABLE VMA left: one scan removes its slot
    ("p0 madvise a[0:1] mergeable\np0 madvise a[0:1] unmergeable\np0 ksm_merge",
     KsmSpec(1, 1, 0, 0)),
    # an exited mm: __ksm_exit frees its slot at once, or leaves it to one scan
    ("p0 fork p1\np1 madvise a[0:1] mergeable\np1 exit\np0 ksm_merge", KsmSpec(0, 1, 0, 0)),
    # a live mm with a VM_MERGEABLE VMA: ksmd keeps scanning
    ("p0 madvise a[0:1] mergeable\np0 ksm_merge", KsmSpec(3, None, 0, 0)),
])
def test_how_many_full_scans_ksmd_completes(text, scans):
    prog = program("region a pages=1\np0 map a[0:1]\n" + text)
    assert last(prog).ksm == scans


def test_a_fork_child_of_a_registered_mm_is_scanned_and_its_ksm_pages_counted():
    prog = program(TWINS + """
        p0 ksm_merge
        p0 fork p1
        p0 ksm_merge
    """)
    # ksm_fork registers the child; its KSM mappings join the stable nodes
    assert last(prog).ksm == KsmSpec(3, None, 2, 6)


@pytest.mark.parametrize("text, refused", [
    ("p0 fork p1\np0 ksm_merge",
     "ksm_merge of a page mapped several times (after fork)"),
    ("p0 madvise z[0:1] free\np0 ksm_merge", "ksm_merge of a lazyfree page"),
    ("p0 ksm_merge\np0 madvise z[0:1] pageout", "madvise pageout of a KSM page"),
    ("p0 ksm_merge\np0 open d0 dmirror0\np0 migrate_to_dev d0 z[0:1]",
     "migrate_to_dev of a KSM page"),
])
def test_sub_cases_the_model_refuses(text, refused):
    prog = program("""
        region z pages=2
        p0 map z[0:2]
        p0 madvise z[0:2] populate_write
        p0 madvise z[0:2] mergeable
    """ + text)
    verdict = check(prog, trace(*[ok()] * len(prog.ops)))
    assert verdict.unmodelled_op == refused


def test_6_12_shows_kpf_ksm_on_every_anonymous_page():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 pagemap a[0:1]
    """)
    flags = {release: expected(prog, release)[2][0].pagemap[0].kflags
             for release in ("7.2.13", "6.12.117", "6.1.192")}
    assert flags == {"7.2.13": ANON | ANON_EXCLUSIVE, "6.12.117": ANON | ANON_EXCLUSIVE | KSM,
                     "6.1.192": ANON | ANON_EXCLUSIVE}


def test_6_1_breaks_ksm_pages_with_a_write_fault_newer_kernels_with_an_unshare_fault():
    prog = program("""
        region z pages=2
        p0 map z[0:2]
        p0 madvise z[0:2] populate_write
        p0 madvise z[0:2] mergeable
        p0 ksm_merge
        p0 open d0 dmirror0
        p0 madvise z[0:1] unmergeable
        p0 snapshot d0 z[0:1]
    """)
    # 6.1 break_ksm: FAULT_FLAG_WRITE -> maybe_mkwrite(pte_mkdirty()); 6.12/7.2: read-only
    snapshots = {release: expected(prog, release)[-1][0].snapshot
                 for release in ("7.2.13", "6.12.117", "6.1.192")}
    assert snapshots == {"7.2.13": bytes((R,)), "6.12.117": bytes((R,)), "6.1.192": bytes((W,))}


def test_shared_mappings_are_not_ksm_candidates():
    # ksm_compatible: MADV_MERGEABLE ignores a VM_SHARED VMA (no flag, no mm_slot)
    prog = program("""
        region s pages=2
        p0 map s[0:2] shared
        p0 madvise s[0:2] populate_write
        p0 madvise s[0:2] mergeable
        p0 ksm_merge
    """)
    assert last(prog).ksm == KsmSpec(0, 0, 0, 0)
