"""Transparent huge pages (reference/thp.py), pinned to what 7.2.13 showed under QEMU: a read
fault maps the huge zero page, a write fault a PMD-mapped THP; VMA changes and partial zaps
split the PMD but not the folio; the PTE tables that keep a fault from mapping a THP; what
is not stated yet is refused by name."""

from test_model_support import (
    SEGV, WROTE, assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, snap, trace,
    wrote, zeros,
)

from harness.prog import OpResult
from harness.prog.observation import KPF, PagemapEntry
from reference import check, uapi

SD, EXCL, FILE, PRESENT = 1 << 55, 1 << 56, 1 << 61, 1 << 63
ANON, ANON_EXCL, THP = KPF["ANON"], 1 << 34, KPF["THP"]
HEAD, TAIL, ZERO_PAGE = KPF["COMPOUND_HEAD"], KPF["COMPOUND_TAIL"], KPF["ZERO_PAGE"]
LRU_ETC = KPF["UPTODATE"] | KPF["LRU"] | KPF["MMAP"] | KPF["SWAPBACKED"]   # not stated
W, PMD = uapi.PROT_WRITE, uapi.PROT_PMD
HUGE_ZERO = 0x1200      # PFN of the huge zero folio's head page
SMALL_ZERO = 0x181A     # PFN of the small zero page


def pm(*entries):
    return OpResult(pagemap=tuple(entries))


def compound(index):
    return HEAD if index == 0 else TAIL


def huge_zero(index):
    """pagemap_pmd_range_thp on the huge zero PMD: present, PM_FILE (not an anonymous
    folio), kpagecount 0; kpageflags ZERO_PAGE|THP and head or tail."""
    return PagemapEntry(PRESENT | SD | FILE | (HUGE_ZERO + index), 0,
                        ZERO_PAGE | THP | compound(index))


def thp_page(head_pfn, index, exclusive=True):
    return PagemapEntry(PRESENT | SD | EXCL | (head_pfn + index), 1,
                        ANON | THP | compound(index) | LRU_ETC
                        | (ANON_EXCL if exclusive else 0))


def small(pfn):
    return PagemapEntry(PRESENT | SD | EXCL | pfn, 1, ANON | ANON_EXCL | LRU_ETC)


NONE = PagemapEntry(SD)
GONE = PagemapEntry(0)      # no VMA


FAULTS = """
    region a pages=1024
    p0 thp always madvise
    p0 map a[0:1024]
    p0 read a[0:1]
    p0 pagemap a[0:2]
    p0 pagemap a[510:512]
    p0 write a[512:513] seed=1
    p0 pagemap a[512:514]
    p0 pagemap a[1023:1024]
"""


def fault_results(prog, thp=0x40000):
    return [ok(), ok(), cpu(*zeros(1)), pm(huge_zero(0), huge_zero(1)),
            pm(huge_zero(510), huge_zero(511)), wrote(1),
            pm(thp_page(thp, 0), thp_page(thp, 1)), pm(thp_page(thp, 511))]


def test_a_read_fault_maps_the_huge_zero_page_and_a_write_fault_a_whole_thp():
    prog = program(FAULTS)
    assert_accepts(prog, *fault_results(prog))


def test_the_pages_of_a_thp_have_consecutive_pfns_and_compound_flags():
    prog = program(FAULTS)
    results = fault_results(prog)
    results[7] = pm(thp_page(0x40000, 510))         # page 511 at head + 510
    assert_rejects(prog, results, 7, "pagemap[0]")
    results = fault_results(prog)
    results[6] = pm(thp_page(0x40000, 0), small(0x40001))   # a tail page without KPF_THP
    assert_rejects(prog, results, 6, "pagemap[1]")
    results = fault_results(prog)
    results[4] = pm(huge_zero(510), PagemapEntry(SD))        # the huge zero page maps all
    assert_rejects(prog, results, 4, "pagemap[1]")


def test_thp_madvise_needs_the_hugepage_advice_and_a_vma_over_the_aligned_2mib():
    prog = program("""
        region a pages=1024
        region b pages=1024
        p0 thp madvise never
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 pagemap a[0:2]
        p0 map b[0:1000]
        p0 madvise b[0:1000] hugepage
        p0 write b[0:1] seed=2
        p0 write b[512:513] seed=3
        p0 pagemap b[0:2]
        p0 pagemap b[512:514]
    """)
    assert_accepts(prog, ok(), ok(), wrote(1), pm(small(0x100), NONE), ok(), ok(), wrote(1),
                   wrote(1), pm(thp_page(0x40000, 0), thp_page(0x40000, 1)),
                   pm(small(0x200), NONE))


def test_munmap_and_mprotect_inside_a_thp_split_the_pmd_but_not_the_folio():
    prog = program("""
        region a pages=1024
        p0 thp always never
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 munmap a[200:201]
        p0 pagemap a[199:202]
        p0 mprotect a[0:100] r
        p0 write a[99:101] seed=2
        p0 pagemap a[99:101]
        p0 read a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    assert_accepts(prog, ok(), ok(), wrote(1), ok(),
                   pm(thp_page(0x40000, 199), GONE, thp_page(0x40000, 201)), ok(),
                   cpu(SEGV, WROTE), pm(thp_page(0x40000, 99), thp_page(0x40000, 100)),
                   cpu(*data))


def test_a_write_to_the_huge_zero_page_maps_a_new_thp_under_a_clear_notifier():
    """do_huge_zero_wp_pmd: MMU_NOTIFY_CLEAR over the 2 MiB, and by the dmirror_do_update
    quirk the page after it: the mirror of a[512] (outside any THP: the VMA ends at 513)
    is lost."""
    prog = program("""
        region a pages=513
        p0 thp always madvise
        p0 map a[0:513]
        p0 open d0 dmirror0
        p0 write a[512:513] seed=1
        p0 dev_read d0 a[512:513]
        p0 read a[0:1]
        p0 dev_read d0 a[512:513]
        p0 write a[1:2] seed=2
        p0 dev_read d0 a[512:513]
        p0 pagemap a[0:2]
    """)
    data = patterns(prog, 1, "a", 512, 513)
    assert_accepts(prog, ok(), ok(), ok(), wrote(1), dev(1, 1, data), cpu(*zeros(1)),
                   dev(1, 0, data), wrote(1), dev(1, 1, data),
                   pm(thp_page(0x40000, 0), thp_page(0x40000, 1)))
    no_notifier = [ok(), ok(), ok(), wrote(1), dev(1, 1, data), cpu(*zeros(1)),
                   dev(1, 0, data), wrote(1), dev(1, 0, data),
                   pm(thp_page(0x40000, 0), thp_page(0x40000, 1))]
    assert_rejects(prog, no_notifier, 8, "faults")


def test_a_pte_table_keeps_a_fault_small_until_dontneed_or_munmap_frees_it():
    """A THP needs pmd_none: a PMD that got a PTE table while THP was off keeps faulting
    small pages; madvise dontneed of the whole 2 MiB frees the table (CONFIG_PT_RECLAIM),
    so does munmap (free_pgtables)."""
    # (THP `madvise` and VM_HUGEPAGE only after it: with `always` khugepaged's start scan
    # might collapse the PMD, collapse.refuse_khugepaged_start_scan)
    prog = program("""
        region a pages=1024
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 thp madvise madvise
        p0 madvise a[0:1024] hugepage
        p0 write a[1:2] seed=2
        p0 pagemap a[1:3]
        p0 madvise a[0:512] dontneed
        p0 write a[3:4] seed=3
        p0 pagemap a[3:5]
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), wrote(1), pm(small(0x300), NONE), ok(),
                   wrote(1), pm(thp_page(0x40000, 3), thp_page(0x40000, 4)))
    assert_rejects(prog, [ok(), wrote(1), ok(), ok(), wrote(1),
                          pm(thp_page(0x40000, 1), thp_page(0x40000, 2))], 5, "pagemap[0]")


def test_ops_not_stated_for_thps_yet_are_refused_on_them():
    base = """
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 open d0 dmirror0
        p0 write a[0:1] seed=1
    """
    for op, name in (("p0 move_pages a[0:1] 1", "move_pages on a THP"),
                     ("p0 mbind a[0:1] 1", "mbind on a THP"),
                     ("p0 madvise a[0:512] pageout", "madvise pageout of a whole THP"),
                     ("p0 madvise a[0:512] free", "madvise free of a whole THP"),
                     ("p0 compact", "compact with a THP")):
        prog = program(base + "    " + op)
        verdict = check(prog, trace(ok(), ok(), ok(), wrote(1), ok()))
        assert verdict.unmodelled_op == name, (op, verdict)
        assert verdict.unmodelled_from == 4


def test_a_device_write_faults_a_thp_and_snapshot_shows_the_pmd():
    prog = program("""
        region a pages=1024
        p0 thp madvise madvise
        p0 map a[0:1024]
        p0 madvise a[0:512] hugepage
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:1]
        p0 snapshot d0 a[0:1]
        p0 dev_write d0 a[0:512] seed=1
        p0 snapshot d0 a[510:514]
        p0 read a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 512)
    # the huge zero page is not is_zero_pfn(): NONE|READ|PMD; the write replaced it by a
    # THP under MMU_NOTIFY_CLEAR (the READ entry is gone, but dmirror_write faulted anyway)
    assert_accepts(prog, ok(), ok(), ok(), ok(), dev(1, 1, zeros(1)),
                   snap(uapi.PROT_READ | uapi.PROT_PMD), dev(512, 1),
                   snap(W | PMD, W | PMD, 0, 0), cpu(*data[:2]))


def test_khugepaged_starting_again_and_older_kernels_are_refused():
    prog = program("""
        region a pages=1
        p0 thp always madvise
        p0 thp never madvise
        p0 thp madvise madvise
    """)
    verdict = check(prog, trace(ok(), ok(), ok()))
    assert verdict.unmodelled_op == "thp enabled again" and verdict.unmodelled_from == 2
    verdict = check(prog, trace(ok(), ok(), ok(), release="6.12.117"))
    assert verdict.unmodelled_op == "thp on kernels before 7.2"


def test_a_thp_allocation_may_fail_and_the_fault_maps_a_small_page():
    """vma_alloc_anon_folio_pmd may return NULL (THP_FAULT_FALLBACK): the fault maps a 4 KiB
    page, and the PMD has a PTE table from then on; for a write to the huge zero page,
    do_huge_pmd_wp_page splits it into small zero pages and copies the one page."""
    prog = program("""
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 read a[512:513]
        p0 write a[513:514] seed=2
        p0 write a[1:2] seed=3
        p0 pagemap a[0:3]
        p0 pagemap a[512:515]
    """)
    small_zero = PagemapEntry(PRESENT | SD | SMALL_ZERO, 0, ZERO_PAGE)
    head = [ok(), ok(), wrote(1), cpu(*zeros(1)), wrote(1), wrote(1)]
    # both allocations fell back
    assert_accepts(prog, *head, pm(small(0x100), small(0x101), NONE),
                   pm(small_zero, small(0x102), small_zero))
    # the first one succeeded, the second fell back
    assert_accepts(prog, *head, pm(thp_page(0x40000, 0), thp_page(0x40000, 1),
                                   thp_page(0x40000, 2)),
                   pm(small_zero, small(0x102), small_zero))
    # both succeeded
    assert_accepts(prog, *head, pm(thp_page(0x40000, 0), thp_page(0x40000, 1),
                                   thp_page(0x40000, 2)),
                   pm(thp_page(0x40200, 0), thp_page(0x40200, 1), thp_page(0x40200, 2)))


def test_fork_shares_a_thp_and_a_cow_write_splits_the_pmd_and_copies_one_page():
    """copy_huge_pmd write-protects the PMD in both and clears PageAnonExclusive; a write
    then finds the folio mapped twice: do_huge_pmd_wp_page splits the PMD
    (MMU_NOTIFY_CLEAR over the 2 MiB) and do_wp_page copies the one page. Once the child
    is gone, a write to the parent's PMD reuses the whole folio."""
    prog = program("""
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 write a[512:513] seed=2
        p0 fork p1
        p0 pagemap a[0:2]
        p1 write a[1:2] seed=3
        p1 pagemap a[0:3]
        p0 pagemap a[0:2]
        p1 exit
        p0 write a[512:513] seed=4
        p0 pagemap a[512:514]
    """)
    def shared(index, count=2):
        return PagemapEntry(PRESENT | SD | (0x40000 + index), count,
                            ANON | THP | compound(index))
    copy = PagemapEntry(PRESENT | SD | EXCL | 0x9000, 1, ANON | ANON_EXCL)
    # p0's page 1 is mapped once now, but p0 maps it by a PMD, and pagemap_pmd_range_thp
    # asks __folio_page_mapped_exclusively of the head page, still mapped twice: no
    # PM_MMAP_EXCLUSIVE (7.2 showed this)
    results = [ok(), ok(), wrote(1), wrote(1), ok(), pm(shared(0), shared(1)),
               wrote(1), pm(shared(0), copy, shared(2)), pm(shared(0), shared(1, 1)),
               ok(), wrote(1), pm(thp_page(0x40200, 0), thp_page(0x40200, 1))]
    assert_accepts(prog, *results)
    results[8] = pm(shared(0), PagemapEntry(shared(1, 1).entry | EXCL, 1, shared(1).flags))
    assert_rejects(prog, results, 8, "pagemap[1]")


def test_an_empty_aligned_piece_with_a_pte_table_migrates_page_by_page():
    """migrate_vma_collect_hole makes a 2 MiB-aligned hole one device THP only where the
    PMD is none; after a 4 KiB fault and dontneed of part of it the table stays, the walk
    goes to the PTEs and every pte_none is collected on its own."""
    text = """
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] dontneed
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:512]
        p0 snapshot d0 a[0:1]
    """
    local_write = uapi.PROT_DEV_PRIVATE_LOCAL | W
    prog = program(text)
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), dev(512, 0, zeros(512)),
                   snap(local_write))
    # dontneed of the whole 2 MiB frees the table (CONFIG_PT_RECLAIM): a device THP
    prog = program(text.replace("madvise a[0:1] dontneed", "madvise a[0:512] dontneed"))
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), dev(512, 0, zeros(512)),
                   snap(local_write | PMD))


def test_a_write_to_a_page_of_a_thp_mapped_once_but_not_exclusive_is_refused():
    """After fork of a PTE-mapped THP and a COW copy of one page in the parent, the child's
    page is mapped once but not PageAnonExclusive: do_wp_page asks
    __wp_can_reuse_large_anon_folio (the folio's large mapcount and mm ids), not stated."""
    prog = program("""
        region a pages=1024
        p0 thp always defer
        p0 map a[0:1024]
        p0 write a[3:56] seed=1
        p0 mlock a[1:2]
        p0 fork p1
        p0 write a[2:3] seed=2
        p1 write a[2:4] seed=3
    """)
    verdict = check(prog, trace(ok(), ok(), wrote(53), ok(), ok(), wrote(1), wrote(2)))
    assert verdict.unmodelled_op == "a write to a page of a THP mapped once but not exclusive"
    assert verdict.ok and verdict.unmodelled_from == 6


def test_ksm_merge_with_a_thp_is_refused():
    prog = program("""
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 write a[0:1] seed=1
        p0 ksm_merge
    """)
    verdict = check(prog, trace(ok(), ok(), wrote(1), ok()))
    assert verdict.unmodelled_op == "ksm_merge with a THP"
