"""Device THPs (reference/device_thp.py), pinned to what 7.2.13 showed under QEMU: a whole
aligned 2 MiB (a THP, the huge zero PMD, an empty PMD without a PTE table) migrates as one
device-private PMD entry; SNAPSHOT shows it with the PMD flag to its own device and as an
error to another; pagemap as swap entries of consecutive device PFNs; migrate_to_sys counts
it as one page; a CPU fault brings the whole 2 MiB back as a THP; FAIL_ALLOC makes it 512
small device pages."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, replaced, snap, trace,
    wrote, zeros,
)

from harness.prog import OpResult
from harness.prog.observation import KPF, PagemapEntry
from reference import check, expected, uapi

SD, SWAP, EXCL, PRESENT = 1 << 55, 1 << 62, 1 << 56, 1 << 63
ANON, ANON_EXCL, THP = KPF["ANON"], 1 << 34, KPF["THP"]
HEAD, TAIL = KPF["COMPOUND_HEAD"], KPF["COMPOUND_TAIL"]
LRU_ETC = KPF["UPTODATE"] | KPF["LRU"] | KPF["MMAP"] | KPF["SWAPBACKED"]   # not stated
LOCAL, W, R, PMD = uapi.PROT_DEV_PRIVATE_LOCAL, uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_PMD
ERROR = uapi.PROT_ERROR
SWP_DEVICE_WRITE, SWP_DEVICE_READ = 28, 29


def pm(*entries):
    return OpResult(pagemap=tuple(entries))


def device_entry(pfn, writable=True):
    return PagemapEntry(SWAP | SD | (pfn << 5)
                        | (SWP_DEVICE_WRITE if writable else SWP_DEVICE_READ))


def thp_page(head_pfn, index):
    return PagemapEntry(PRESENT | SD | EXCL | (head_pfn + index), 1,
                        ANON | THP | (HEAD if index == 0 else TAIL) | LRU_ETC | ANON_EXCL)


DEVICE_PFN = 0xFCDFE00

MIGRATE_A_THP = """
    region a pages=1024
    p0 open d0 dmirror0
    p0 open d1 dmirror1
    p0 thp madvise madvise
    p0 map a[0:1024]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 pagemap a[0:2]
    p0 migrate_to_dev d0 a[0:512]
    p0 snapshot d0 a[0:2]
    p0 snapshot d1 a[0:2]
    p0 pagemap a[0:2]
    p0 migrate_to_sys d0 a[0:512]
    p0 pagemap a[0:2]
    p0 snapshot d0 a[0:2]
"""


def migrate_a_thp_results(prog):
    return [ok(), ok(), ok(), ok(), ok(), wrote(512),
            pm(thp_page(0x200, 0), thp_page(0x200, 1)),
            dev(512, 0, patterns(prog, 1, "a", 0, 512)),
            snap(LOCAL | W | PMD, LOCAL | W | PMD), snap(ERROR, ERROR),
            pm(device_entry(DEVICE_PFN), device_entry(DEVICE_PFN + 1)),
            OpResult(cpages=1, faults=0),
            pm(thp_page(0x200, 0), thp_page(0x200, 1)),
            snap(W | PMD, W | PMD)]


def test_a_thp_migrates_whole_and_comes_back_counted_as_one_page():
    prog = program(MIGRATE_A_THP)
    assert_accepts(prog, *migrate_a_thp_results(prog))


def test_migrate_to_sys_of_a_device_thp_reports_one_page_not_512():
    """dmirror_successful_migrated_pages counts valid src entries, and only src[0] of a
    compound migration is valid (migrate_vma_collect_skip zeroed the other 511)."""
    prog = program(MIGRATE_A_THP)
    results = migrate_a_thp_results(prog)
    assert_rejects(prog, replaced(results, 11, OpResult(cpages=512, faults=0)), 11, "cpages",
                   "1")


def test_another_device_sees_a_device_thp_as_an_error_not_as_none():
    # hmm_vma_handle_absent_pmd: no fault asked, hmm_pfns_fill(HMM_PFN_ERROR)
    prog = program(MIGRATE_A_THP)
    results = migrate_a_thp_results(prog)
    assert_rejects(prog, replaced(results, 9, snap(0, 0)), 9, "snapshot[0]")


EMPTY_AND_FAIL_ALLOC = """
    region b pages=1024
    region c pages=1024
    p0 open d0 dmirror0
    p0 map b[0:512]
    p0 migrate_to_dev d0 b[0:512]
    p0 snapshot d0 b[510:512]
    p0 pagemap b[0:2]
    p0 read b[0:2]
    p0 pagemap b[0:2]
    p0 snapshot d0 b[0:1]
    p0 map c[0:512]
    p0 flags d0 1
    p0 migrate_to_dev d0 c[0:512]
    p0 snapshot d0 c[0:2]
    p0 pagemap c[0:2]
"""


def empty_and_fail_alloc_results(prog):
    return [ok(), ok(), dev(512, 0, zeros(512)), snap(LOCAL | W | PMD, LOCAL | W | PMD),
            pm(device_entry(DEVICE_PFN), device_entry(DEVICE_PFN + 1)),
            cpu(*zeros(2)), pm(thp_page(0x1E00, 0), thp_page(0x1E00, 1)),
            snap(W | PMD),
            ok(), OpResult(cpages=0, faults=0), dev(512, 0, zeros(512)),
            snap(LOCAL | W, LOCAL | W),
            pm(device_entry(0xFCFFFFF), device_entry(0xFCFFFFE))]


def test_an_empty_pmd_becomes_a_device_thp_and_a_cpu_read_brings_a_thp_back():
    """With THP `never` too: migrate_vma_collect_hole and migrate_vma_insert_huge_pmd_page do
    not ask the THP mode; the fault back allocates the folio's order."""
    prog = program(EMPTY_AND_FAIL_ALLOC)
    assert_accepts(prog, *empty_and_fail_alloc_results(prog))


def test_with_fail_alloc_the_device_takes_512_small_pages():
    prog = program(EMPTY_AND_FAIL_ALLOC)
    results = empty_and_fail_alloc_results(prog)
    assert_rejects(prog, replaced(results, 11, snap(LOCAL | W | PMD, LOCAL | W | PMD)), 11,
                   "snapshot[0]")


def test_a_piece_over_part_of_a_thp_splits_it_and_every_mirror_loses_the_2mib():
    """migrate_vma_collect_huge_pmd's fallback: split_folio -> try_to_migrate_one fires
    MMU_NOTIFY_CLEAR (no owner) over the folio's 2 MiB, so another device's mirror of pages
    outside the piece is gone too; the pages migrate as small device pages (no PMD flag)."""
    prog = program("""
        region a pages=1024
        p0 open d0 dmirror0
        p0 open d1 dmirror1
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 dev_read d1 a[0:4]
        p0 migrate_to_dev d0 a[100:200]
        p0 dev_read d1 a[0:4]
        p0 snapshot d0 a[99:101]
    """)
    predicted = expected(prog)
    # with the THP one fault; had the write's THP allocation failed (4 KiB pages, an allowed
    # outcome kept second), nothing splits and the mirror keeps a[0:4]
    assert [o.faults for o in predicted[8]] == [(1,), (0,)]
    assert [o.snapshot for o in predicted[9]] == [bytes([W, LOCAL | W])]


def test_a_fault_on_a_page_of_a_split_device_thp_splits_the_device_folio():
    """After munmap of the middle the device-private PMD is 512 PTEs of one device folio; a
    CPU read of one page takes order 0 and migrate_vma_split_folio splits the folio first:
    the page comes back alone, the others stay small device pages."""
    prog = program("""
        region b pages=1024
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map b[0:1024]
        p0 madvise b[0:512] hugepage
        p0 write b[0:512] seed=2
        p0 migrate_to_dev d0 b[0:512]
        p0 munmap b[128:384]
        p0 snapshot d0 b[126:128]
        p0 read b[10:11]
        p0 snapshot d0 b[9:12]
    """)
    predicted = expected(prog)
    assert [o.snapshot for o in predicted[7]] == [bytes([LOCAL | W] * 2)]
    assert [o.snapshot for o in predicted[9]] == [bytes([LOCAL | W, W, LOCAL | W])]


def test_older_drivers_migrate_an_empty_pmd_page_by_page():
    """6.12's and 6.1's test_hmm select no compound entries (profile device_thp): the hole
    becomes 512 small device pages, which SNAPSHOT shows without the PMD flag."""
    prog = program("""
        region b pages=1024
        p0 open d0 dmirror0
        p0 map b[0:512]
        p0 migrate_to_dev d0 b[0:512]
        p0 snapshot d0 b[0:1]
    """)
    results = [ok(), ok(), dev(512, 0, zeros(512)), snap(LOCAL | W)]
    for release in ("6.12.117", "6.1.192"):
        verdict = check(prog, trace(*results, release=release))
        assert verdict.ok and verdict.checked == 4, str(verdict)
    huge = results[:3] + [snap(LOCAL | W | PMD)]
    verdict = check(prog, trace(*huge, release="6.12.117"))
    assert [d.field for d in verdict.divergences] == ["snapshot[0]"]
    assert_accepts(prog, *huge)     # 7.2: a device THP
    verdict = check(prog, trace(*results))
    assert [d.field for d in verdict.divergences] == ["snapshot[0]"]


def test_madvise_free_of_part_or_all_of_a_device_thp_changes_nothing_but_the_mirror():
    """madvise_free_huge_pmd: "if (unlikely(!pmd_present(orig_pmd))) goto out" comes before
    the split of a partly covered THP, and madvise_free_pte_range finds no PTE table under a
    non-present PMD: the device THP stays whole, its content on the device."""
    prog = program("""
        region a pages=1024
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 migrate_to_dev d0 a[0:512]
        p0 madvise a[100:200] free
        p0 snapshot d0 a[99:101]
        p0 madvise a[0:512] free
        p0 snapshot d0 a[0:2]
        p0 read a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 512)
    good = [ok(), ok(), ok(), ok(), wrote(512), dev(512, 0, data), ok(),
            snap(LOCAL | W | PMD, LOCAL | W | PMD), ok(), snap(LOCAL | W | PMD, LOCAL | W | PMD),
            cpu(*data[:2])]
    assert_accepts(prog, *good)
    # split, the device pages would show without the PMD flag from then on (small pages
    # from the start are the other allowed outcome: the write's THP allocation failed)
    split = replaced(good, 7, snap(LOCAL | W, LOCAL | W))
    assert_rejects(prog, split, 9, "snapshot[0]")
    # discarded, the pages would read zeros
    assert_rejects(prog, replaced(good, 10, cpu(*zeros(2))), 10, "pages[0]")
