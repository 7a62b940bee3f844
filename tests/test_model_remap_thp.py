"""mremap of PMD mappings (reference/remap_thp.py), pinned to what 7.2.13 showed under QEMU
(tests/test_vm_model_remap_thp.py): move_huge_pmd moves a THP, the huge zero PMD and a device
THP's device-private PMD whole to an aligned address; split_huge_pmd splits them when the
target is not aligned; move_soft_dirty_pmd marks a moved THP soft-dirty but not a moved
device-private PMD; the source PMD split_huge_pmd split keeps its PTE table."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, pattern, patterns, program, replaced, snap,
    trace, wrote, zeros,
)
from test_model_device_thp import DEVICE_PFN, SWAP, SWP_DEVICE_READ, device_entry, pm, thp_page

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check, uapi

R, W, PMD, ZERO = uapi.PROT_READ, uapi.PROT_WRITE, uapi.PROT_PMD, uapi.PROT_ZERO
LOCAL, NONE = uapi.PROT_DEV_PRIVATE_LOCAL, uapi.PROT_NONE
SD = 1 << 55


def without_soft_dirty(entry: PagemapEntry) -> PagemapEntry:
    return PagemapEntry(entry.entry & ~SD, entry.count, entry.flags)


THP_MOVES = """
    region a pages=512
    region b pages=2048
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map a[0:512]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 pagemap a[0:1]
    p0 mremap a[0:512] b[0:512]
    p0 snapshot d0 b[0:2]
    p0 mremap b[0:512] b[640:1152]
    p0 snapshot d0 b[640:642]
    p0 read b[640:642]
"""


def thp_moves_results(prog):
    # the pagemap rules out a failed THP allocation (small pages) at the write
    return [ok(), ok(), ok(), ok(), wrote(512), pm(thp_page(0x200, 0)), ok(),
            snap(W | PMD, W | PMD), ok(), snap(W, W), cpu(*patterns(prog, 1, "a", 0, 2))]


def test_a_thp_moved_to_an_aligned_address_stays_one_pmd():
    prog = program(THP_MOVES)
    results = thp_moves_results(prog)
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 7, snap(W, W)), 7, "snapshot[0]")


def test_a_thp_moved_to_an_unaligned_address_is_split_into_ptes():
    prog = program(THP_MOVES)
    results = thp_moves_results(prog)
    assert_rejects(prog, replaced(results, 9, snap(W | PMD, W | PMD)), 9, "snapshot[0]")


HUGE_ZERO_MOVES = """
    region c pages=512
    region e pages=2048
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map c[0:512]
    p0 madvise c[0:512] hugepage
    p0 read c[0:1]
    p0 mremap c[0:512] e[0:512]
    p0 snapshot d0 e[0:2]
    p0 mremap e[0:512] e[640:1152] dontunmap
    p0 snapshot d0 e[640:642]
    p0 read e[0:1]
    p0 snapshot d0 e[0:2]
"""


def test_the_huge_zero_pmd_moves_whole_or_splits_and_the_split_source_keeps_its_table():
    """The read of the emptied source after MREMAP_DONTUNMAP finds a PTE table there (the
    split left it): a small zero page, not the huge zero PMD."""
    prog = program(HUGE_ZERO_MOVES)
    results = [ok(), ok(), ok(), ok(), cpu(*zeros(1)), ok(), snap(R | PMD, R | PMD), ok(),
               snap(ZERO | R, ZERO | R), cpu(*zeros(1)), snap(ZERO | R, NONE)]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 10, snap(R | PMD, R | PMD)), 10, "snapshot[0]")


SOFT_DIRTY_THP = """
    region a pages=512
    region b pages=512
    p0 thp madvise madvise
    p0 map a[0:512]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 pagemap a[0:1]
    p0 clear_soft_dirty
    p0 mremap a[0:512] b[0:512]
    p0 pagemap b[0:1]
"""


def test_move_soft_dirty_pmd_marks_a_moved_thp():
    prog = program(SOFT_DIRTY_THP)
    results = [ok(), ok(), ok(), wrote(512), pm(thp_page(0x200, 0)), ok(), ok(),
               pm(thp_page(0x200, 0))]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 7, pm(without_soft_dirty(thp_page(0x200, 0)))), 7,
                   "pagemap[0]")


SOFT_DIRTY_DEVICE_THP = """
    region a pages=512
    region b pages=512
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map a[0:512]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 pagemap a[0:1]
    p0 clear_soft_dirty
    p0 migrate_to_dev d0 a[0:512]
    p0 mremap a[0:512] b[0:512]
    p0 pagemap b[0:1]
    p0 snapshot d0 b[0:1]
"""


def test_move_soft_dirty_pmd_leaves_a_moved_device_private_pmd_as_it_was():
    """move_soft_dirty_pmd marks present and migration PMDs only; clear_soft_dirty left the
    THP's PMD clean and write-protected, migrate_to_dev carried both to the device entry."""
    prog = program(SOFT_DIRTY_DEVICE_THP)
    readable = PagemapEntry(SWAP | (DEVICE_PFN << 5) | SWP_DEVICE_READ)
    results = [ok(), ok(), ok(), ok(), wrote(512), pm(thp_page(0x200, 0)), ok(),
               dev(512, 0, patterns(prog, 1, "a", 0, 512)), ok(), pm(readable),
               snap(LOCAL | R | PMD)]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 9, pm(device_entry(DEVICE_PFN, writable=False))),
                   9, "pagemap[0]")


DEVICE_THP_UNALIGNED = """
    region c pages=512
    region e pages=2048
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map c[0:512]
    p0 madvise c[0:512] hugepage
    p0 write c[0:512] seed=2
    p0 pagemap c[0:1]
    p0 migrate_to_dev d0 c[0:512]
    p0 mremap c[0:512] e[128:640] dontunmap
    p0 snapshot d0 e[128:130]
    p0 read e[300:301]
    p0 snapshot d0 e[128:130]
    p0 read c[0:1]
    p0 read e[128:130]
"""


def test_a_device_thp_moved_unaligned_is_split_and_a_fault_brings_back_one_page():
    """The device-private PMD splits into device-private PTEs of the large device folio;
    a CPU fault on one (dmirror_devmem_fault with vmf->pte: order 0) splits the folio
    (migrate_vma_collect_pmd -> migrate_vma_split_folio) and brings back that page."""
    prog = program(DEVICE_THP_UNALIGNED)
    results = [ok(), ok(), ok(), ok(), wrote(512), pm(thp_page(0x200, 0)),
               dev(512, 0, patterns(prog, 2, "c", 0, 512)), ok(),
               snap(LOCAL | W, LOCAL | W), cpu(pattern(prog, 2, "c", 172)),
               snap(LOCAL | W, LOCAL | W), cpu(*zeros(1)), cpu(*patterns(prog, 2, "c", 0, 2))]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 8, snap(LOCAL | W | PMD, LOCAL | W | PMD)), 8,
                   "snapshot[0]")


def test_migrate_to_dev_of_a_thp_left_pte_mapped_at_an_unaligned_address_splits_it():
    """migrate_vma_collect_pmd meets a large folio through a PTE: migrate_vma_split_folio,
    then 512 small pages migrate (hmm-tests migrate_remap_fault, before = 1)."""
    prog = program("""
        region buffer pages=2048
        p0 open fd dmirror0
        p0 thp madvise madvise
        p0 map buffer[0:2048]
        p0 madvise buffer[0:512] hugepage
        p0 munmap buffer[512:1536]
        p0 write buffer[0:512] seed=1
        p0 mremap buffer[0:512] buffer[640:1152]
        p0 migrate_to_dev fd buffer[640:1152]
        p0 snapshot fd buffer[640:642]
        p0 read buffer[640:642]
    """)
    results = [ok(), ok(), ok(), ok(), ok(), wrote(512), ok(),
               dev(512, 0, patterns(prog, 1, "buffer", 0, 512)), snap(LOCAL | W, LOCAL | W),
               cpu(*patterns(prog, 1, "buffer", 0, 2))]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 8, snap(LOCAL | W | PMD, LOCAL | W | PMD)), 8,
                   "snapshot[0]")


def test_an_mremap_leaving_a_thp_mapped_at_two_places_is_refused():
    prog = program("""
        region a pages=512
        region b pages=512
        p0 thp madvise madvise
        p0 map a[0:512]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 mremap a[0:256] b[0:256]
    """)
    verdict = check(prog, trace(ok(), ok(), ok(), wrote(512), ok()))
    assert verdict.ok and verdict.unmodelled_from == 4
    assert "mremap of part of a THP's mappings" in str(verdict.unmodelled)


DONTUNMAP_SOURCE_READ = """
    region a pages=1024
    region b pages=2048
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map a[0:512]
    p0 write a[0:512] seed=1
    p0 mremap a[0:512] b[0:512] dontunmap
    p0 madvise a[0:512] hugepage
    p0 read a[0:1]
    p0 snapshot d0 a[0:1]
    p0 mremap b[0:512] b[640:1152] dontunmap
    p0 madvise b[0:512] hugepage
    p0 read b[0:1]
    p0 snapshot d0 b[0:1]
"""


def test_move_normal_pmd_leaves_the_source_pmd_none_and_move_ptes_leaves_its_table():
    """A THP-eligible read of the source emptied by MREMAP_DONTUNMAP: the huge zero PMD
    where move_normal_pmd moved the PTE table (whole aligned 2 MiB, target PMD none), a
    small zero page where move_ptes left it (unaligned target)."""
    prog = program(DONTUNMAP_SOURCE_READ)
    results = [ok(), ok(), ok(), wrote(512), ok(), ok(), cpu(*zeros(1)), snap(R | PMD), ok(),
               ok(), cpu(*zeros(1)), snap(ZERO | R)]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 7, snap(ZERO | R)), 7, "snapshot[0]")
    assert_rejects(prog, replaced(results, 11, snap(R | PMD)), 11, "snapshot[0]")


REALIGN = """
    region a pages=1024
    region b pages=2048
    p0 open d0 dmirror0
    p0 thp madvise madvise
    p0 map a[100:700]
    p0 write a[100:700] seed=1
    p0 mremap a[100:700] b[100:700] dontunmap
    p0 map a[0:100]
    p0 madvise a[0:512] hugepage
    p0 read a[0:1]
    p0 snapshot d0 a[0:1]
    p0 map b[0:100]
    p0 madvise b[0:512] hugepage
    p0 read b[0:1]
    p0 snapshot d0 b[0:1]
    p0 read b[100:101]
"""


def test_try_realign_addr_moves_the_first_table_whole():
    """A range starting its VMA inside a PMD with nothing below it there, to an equally
    aligned target: try_realign_addr starts at the PMD boundary and move_normal_pmd takes
    the first table (7.2)."""
    prog = program(REALIGN)
    results = [ok(), ok(), ok(), wrote(600), ok(), ok(), ok(), cpu(*zeros(1)), snap(R | PMD),
               ok(), ok(), cpu(*zeros(1)), snap(ZERO | R), cpu(pattern(prog, 1, "a", 100))]
    assert_accepts(prog, *results)
    assert_rejects(prog, replaced(results, 8, snap(ZERO | R)), 8, "snapshot[0]")
    assert_rejects(prog, replaced(results, 12, snap(R | PMD)), 12, "snapshot[0]")

