"""The `smaps` op: /proc/self/smaps per VMA, from the model's state (fs/proc/task_mmu.c,
smaps_pte_entry / smaps_account)."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, trace, wrote, zeros,
)

from harness.prog import OpResult
from harness.prog.observation import SMAPS_FIELDS, SmapsVma
from harness.prog.ops import REGION_BASE
from reference import check, expected

A = REGION_BASE   # region a is the first region


def vma(start_page, end_page, referenced=None, **fields):
    """A smaps record of a's pages [start_page, end_page); unnamed fields are 0; the
    clean/dirty split is given as Private_Dirty/Shared_Dirty (the model states the sums)."""
    values = dict.fromkeys(SMAPS_FIELDS, 0)
    values.update(fields)
    values["Referenced"] = values["Rss"] if referenced is None else referenced
    return SmapsVma(A + start_page * 4096, A + end_page * 4096,
                    tuple((name, values[name]) for name in SMAPS_FIELDS))


def smaps(*vmas):
    return OpResult(smaps=tuple(vmas))


def test_written_pages_are_private_anonymous_rss_and_the_zero_page_is_not_counted():
    prog = program("""
        region a pages=8
        p0 map a[0:8]
        p0 write a[0:3] seed=1
        p0 read a[3:5]
        p0 smaps a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(3), cpu(*zeros(2)),
                   smaps(vma(0, 8, Rss=12, Pss=12, Private_Dirty=12, Anonymous=12)))


def test_every_vma_overlapping_the_range_is_reported_with_its_own_bounds():
    prog = program("""
        region a pages=8
        p0 map a[0:8]
        p0 write a[0:8] seed=1
        p0 mprotect a[2:4] r
        p0 mlock a[6:8]
        p0 smaps a[1:7]
    """)
    assert_accepts(prog, ok(), wrote(8), ok(), ok(), smaps(
        vma(0, 2, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8),
        vma(2, 4, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8),
        vma(4, 6, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8),
        vma(6, 8, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8, Locked=8)))


def test_pages_shared_with_a_child_count_half_in_pss_and_as_shared():
    # smaps_account: folio_precise_page_mapcount 2 -> pss = PAGE_SIZE / 2, shared
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 fork p1
        p1 write a[0:1] seed=2
        p0 smaps a[0:4]
        p1 smaps a[0:4]
    """)
    # p0: a[0] private again (the child copied it), a[1:4] shared: 4 + 3 * 2 = 10 kB Pss
    assert_accepts(prog, ok(), wrote(4), ok(), wrote(1),
                   smaps(vma(0, 4, Rss=16, Pss=10, Shared_Dirty=12, Private_Dirty=4,
                             Anonymous=16)),
                   smaps(vma(0, 4, Rss=16, Pss=10, Shared_Dirty=12, Private_Dirty=4,
                             Anonymous=16)))


def test_a_third_of_a_page_is_summed_in_fixed_point_before_it_is_rounded_down():
    # three processes share 3 pages: pss = 3 * ((4096 << 12) / 3) >> 12 = 4095 B -> 3 kB
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:3] seed=1
        p0 fork p1
        p0 fork p2
        p2 smaps a[0:3]
    """)
    assert_accepts(prog, ok(), wrote(3), ok(), ok(),
                   smaps(vma(0, 3, Rss=12, Pss=3, Shared_Dirty=12, Anonymous=12)))


def test_swapped_pages_count_as_swap_and_device_pages_as_resident():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 madvise a[0:1] pageout
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[1:2]
        p0 smaps a[0:4]
    """)
    data = patterns(prog, 1, "a", 1, 2)
    assert_accepts(prog, ok(), wrote(4), ok(), ok(), dev(1, 0, data),
                   smaps(vma(0, 4, Rss=12, Pss=12, Private_Dirty=12, Anonymous=12, Swap=4,
                             SwapPss=4)))


def test_a_device_exclusive_entry_is_shared_in_7_2_and_private_in_6_1():
    # smaps_account: 7.2 (and 6.12) count every non-present entry as "maybe shared";
    # 6.1 asks the mapcount, which the entry dropped.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 smaps a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    shared = smaps(vma(0, 2, Rss=8, Pss=8, Shared_Dirty=4, Private_Dirty=4, Anonymous=8))
    private = smaps(vma(0, 2, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8))
    results = (ok(), wrote(2), ok(), dev(1, 0, data))
    assert check(prog, trace(*results, shared, release="7.2.13")).ok
    assert not check(prog, trace(*results, private, release="7.2.13")).ok
    assert check(prog, trace(*results, shared, release="6.12.117")).ok
    assert check(prog, trace(*results, private, release="6.1.192")).ok
    assert not check(prog, trace(*results, shared, release="6.1.192")).ok


def test_clean_and_dirty_may_split_but_their_sum_and_referenced_are_bounded():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 smaps a[0:2]
    """)
    split = vma(0, 2, referenced=4, Rss=8, Pss=8, Private_Clean=4, Private_Dirty=4,
                Anonymous=8)
    assert_accepts(prog, ok(), wrote(2), smaps(split))
    too_much = vma(0, 2, Rss=8, Pss=8, Private_Clean=4, Private_Dirty=8, Anonymous=8)
    assert_rejects(prog, [ok(), wrote(2), smaps(too_much)], 2, "smaps[0]")
    over = vma(0, 2, referenced=12, Rss=8, Pss=8, Private_Dirty=8, Anonymous=8)
    assert_rejects(prog, [ok(), wrote(2), smaps(over)], 2, "smaps[0]")


def test_a_wrong_rss_or_vma_boundary_is_a_divergence():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:1] seed=1
        p0 smaps a[0:4]
    """)
    assert_rejects(prog, [ok(), wrote(1), smaps(vma(0, 4, Rss=8, Pss=8, Private_Dirty=8,
                                                   Anonymous=8))], 2, "smaps[0]")
    assert_rejects(prog, [ok(), wrote(1), smaps(vma(0, 2, Rss=4, Pss=4, Private_Dirty=4,
                                                   Anonymous=4))], 2, "smaps")


def test_smaps_of_a_range_without_vmas_reports_no_record():
    prog = program("region a pages=2\np0 smaps a[0:2]\n")
    assert_accepts(prog, smaps())
    assert expected(prog)[0][0].smaps == ()


THP_THEN_DEVICE_THP = """
    region a pages=1024
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map a[0:1024]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 smaps a[0:1]
    p0 migrate_to_dev d0 a[0:512]
    p0 smaps a[0:1]
"""


def test_a_thp_counts_in_anon_huge_pages_and_a_device_thp_as_shared():
    """smaps_pmd_entry: AnonHugePages += 2 MiB for an anonymous folio (a device THP's folio
    is anonymous too); the device-private PMD is not present, so smaps_account counts it
    "maybe shared": shared, full Pss."""
    prog = program(THP_THEN_DEVICE_THP)
    thp = vma(0, 512, Rss=2048, Pss=2048, Private_Dirty=2048, Anonymous=2048,
              AnonHugePages=2048)
    device_thp = vma(0, 512, referenced=0, Rss=2048, Pss=2048, Shared_Dirty=2048,
                     Anonymous=2048, AnonHugePages=2048)
    good = [ok(), ok(), ok(), ok(), wrote(512), smaps(thp),
            dev(512, 0, patterns(prog, 1, "a", 0, 512)), smaps(device_thp)]
    verdict = check(prog, trace(*good))
    assert verdict.ok and verdict.checked == len(good), str(verdict)
    # without AnonHugePages the write's THP allocation failed (allowed): 512 small pages,
    # which migrate as small device pages, "fake-present" and private, not as this PMD
    no_huge = vma(0, 512, Rss=2048, Pss=2048, Private_Dirty=2048, Anonymous=2048)
    assert_rejects(prog, good[:5] + [smaps(no_huge)] + good[6:], 7, "smaps[0]")
    fake_present = vma(0, 512, referenced=0, Rss=2048, Pss=2048, Private_Dirty=2048,
                       Anonymous=2048, AnonHugePages=2048)
    assert_rejects(prog, good[:7] + [smaps(fake_present)], 7, "smaps[0]")
