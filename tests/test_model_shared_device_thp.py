"""A device THP mapped by several processes (after fork), 7.2: each way back brings one new
THP in every process mapping it (reference/device_thp.py: try_to_migrate over the other
processes' device-private PMDs, remove_migration_pmd in each). Each trace is what 7.2.13
reported for the program under QEMU (tests/test_vm_model_shared_device_thp.py runs the
same programs)."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, replaced, snap, wrote,
    zeros,
)

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import uapi

R_PMD = uapi.PROT_READ | uapi.PROT_PMD
W_PMD = uapi.PROT_WRITE | uapi.PROT_PMD

PRESENT, SOFT_DIRTY, MMAP_EXCLUSIVE = 1 << 63, 1 << 55, 1 << 56
# kpageflags as 7.2 reported them for the head and the next page of an anonymous THP that
# is not PageAnonExclusive (LRU, dirty and the other bits the model leaves alone included)
HEAD_FLAGS, TAIL_FLAGS = 0x40D838, 0x415838
ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS = 0x40D828, 0x415828     # never written: not dirty


def thp_pages(pfn, count, head=HEAD_FLAGS, tail=TAIL_FLAGS):
    """pagemap of the first two pages of a PMD-mapped THP at `pfn` mapped `count` times."""
    bits = PRESENT | SOFT_DIRTY | (MMAP_EXCLUSIVE if count == 1 else 0)
    return OpResult(pagemap=(PagemapEntry(bits | pfn, count, head),
                             PagemapEntry(bits | (pfn + 1), count, tail)))


# Also run on the kernel: tests/test_vm_model_shared_device_thp.py
CHILD_READ_THEN_DEVICE_WRITE = """
    region a pages=1024
    p0 open d0 dmirror0
    p0 open d1 dmirror1
    p0 thp madvise madvise
    p0 map a[0:1024]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 migrate_to_dev d0 a[0:512]
    p0 dev_read d1 a[512:514]
    p0 fork p1
    p1 read a[0:2]
    p0 dev_read d1 a[512:514]
    p0 pagemap a[0:2]
    p1 pagemap a[0:2]
    p0 snapshot d0 a[0:2]
    p1 open c0 dmirror0
    p1 dev_write c0 a[0:512] seed=2
    p1 read a[0:2]
    p0 read a[0:2]
    p0 pagemap a[0:2]
"""


def test_the_child_read_brings_the_shared_device_thp_back_in_both_processes():
    # hmm-tests anon_write_child, migrate = 1, use_thp = 1, with d1 beside the THP: the
    # child's fault (do_huge_pmd_device_private -> dmirror_devmem_fault) unmaps the
    # parent's PMD through try_to_migrate, whose MMU_NOTIFY_CLEAR over the parent's 2 MiB
    # takes d1's entry of page 512 (the +1 quirk); remove_migration_pmd maps one new THP,
    # read-only and not exclusive, in both. The child's device write copies on write
    # (faults == 1, as hmm-tests asserts) and the parent keeps its data and its THP.
    prog = program(CHILD_READ_THEN_DEVICE_WRITE)
    data = patterns(prog, 1, "a", 0, 512)
    good = [ok(), ok(), ok(), ok(), ok(), wrote(512), dev(512, 0, data),
            dev(2, 1, zeros(2)), ok(), cpu(*data[:2]), dev(2, 1, zeros(2)),
            thp_pages(0x200, 2), thp_pages(0x200, 2), snap(R_PMD, R_PMD), ok(), dev(512, 1),
            cpu(*patterns(prog, 2, "a", 0, 2)), cpu(*data[:2]), thp_pages(0x200, 1)]
    assert_accepts(prog, *good)
    # the parent's mapping went through try_to_migrate: its CLEAR is certain ...
    assert_rejects(prog, replaced(good, 10, dev(2, 0, zeros(2))), 10, "faults")
    # ... the THP is mapped by both processes, read-only (a write must still copy) ...
    assert_rejects(prog, replaced(good, 11, thp_pages(0x200, 1)), 11, "pagemap[0]")
    assert_rejects(prog, replaced(good, 13, snap(W_PMD, W_PMD)), 13, "snapshot[0]")
    # ... and the child's device write did not reach the parent's pages.
    assert_rejects(prog, replaced(good, 17, cpu(*patterns(prog, 2, "a", 0, 2))), 17,
                   "pages[0]")


MIGRATE_TO_SYS_FROM_THE_CHILD = """
    region a pages=1024
    p0 open d0 dmirror0
    p0 open d1 dmirror1
    p0 map a[0:1024]
    p0 migrate_to_dev d0 a[0:512]
    p0 fork p1
    p1 open c0 dmirror0
    p1 open c1 dmirror1
    p1 dev_read c0 a[512:514]
    p1 dev_read c1 a[512:514]
    p0 dev_read d1 a[512:514]
    p1 migrate_to_sys c1 a[0:512]
    p1 migrate_to_sys c0 a[0:512]
    p0 dev_read d1 a[512:514]
    p1 dev_read c0 a[512:514]
    p0 pagemap a[0:2]
    p1 pagemap a[0:2]
    p1 snapshot c0 a[0:2]
    p0 write a[3:4] seed=3
    p1 read a[3:4]
    p0 read a[3:4]
"""


def test_migrate_to_sys_through_the_child_own_dmirror_brings_it_back_in_both():
    # The device THP the parent's d0 made is selected by the child's c0 (same device,
    # pgmap owner), not by c1: cpages 0, then 1 (only src[0] of a compound migration is
    # valid). try_to_migrate CLEARs the parent's 2 MiB (d1 loses page 512); c0 lost its
    # entry of page 512 to c1's collect (MMU_NOTIFY_MIGRATE of another device).
    prog = program(MIGRATE_TO_SYS_FROM_THE_CHILD)
    good = [ok(), ok(), ok(), dev(512, 0, zeros(512)), ok(), ok(), ok(),
            dev(2, 1, zeros(2)), dev(2, 1, zeros(2)), dev(2, 1, zeros(2)),
            OpResult(cpages=0, faults=0), OpResult(cpages=1, faults=0),
            dev(2, 1, zeros(2)), dev(2, 1, zeros(2)),
            thp_pages(0x200, 2, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS),
            thp_pages(0x200, 2, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS), snap(R_PMD, R_PMD),
            wrote(1), cpu(*zeros(1)), cpu(*patterns(prog, 3, "a", 3, 4))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 11, OpResult(cpages=512, faults=0)), 11, "cpages")
    assert_rejects(prog, replaced(good, 12, dev(2, 0, zeros(2))), 12, "faults")
    assert_rejects(prog, replaced(good, 18, cpu(*patterns(prog, 3, "a", 3, 4))), 18,
                   "pages[0]")


EVICTION_OF_SHARED_DEVICE_THPS = """
    region a pages=1024
    region b pages=512
    p0 open d0 dmirror0
    p0 open d1 dmirror1
    p0 map a[0:1024]
    p0 migrate_to_dev d0 a[0:512]
    p0 fork p1
    p1 open c1 dmirror1
    p1 dev_read c1 a[512:514]
    p0 dev_read d1 a[512:514]
    p0 release d0
    p1 dev_read c1 a[512:514]
    p0 dev_read d1 a[512:514]
    p0 pagemap a[0:2]
    p1 pagemap a[0:2]
    p0 map b[0:512]
    p0 migrate_to_dev d0 b[0:512]
    p0 fork p2
    p1 close d0
    p2 close d0
    p0 close d0
    p0 pagemap b[0:2]
    p2 pagemap b[0:2]
    p2 exit
    p0 pagemap b[0:2]
"""


def test_release_and_the_last_close_evict_a_shared_device_thp_into_every_process():
    # dmirror_device_evict_chunk: try_to_migrate CLEARs the 2 MiB in both processes (each
    # d1/c1 loses page 512), folio_alloc of order 9 and remove_migration_pmd in each; the
    # last close (the fd is shared by three processes) does the same for b.
    prog = program(EVICTION_OF_SHARED_DEVICE_THPS)
    shared = thp_pages(0x200, 2, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS)
    good = [ok(), ok(), ok(), dev(512, 0, zeros(512)), ok(), ok(), dev(2, 1, zeros(2)),
            dev(2, 1, zeros(2)), dev(0, 0), dev(2, 1, zeros(2)), dev(2, 1, zeros(2)),
            shared, shared, ok(), dev(512, 0, zeros(512)), ok(), ok(), ok(), ok(),
            thp_pages(0x1E00, 2, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS),
            thp_pages(0x1E00, 2, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS), ok(),
            thp_pages(0x1E00, 1, ZERO_HEAD_FLAGS, ZERO_TAIL_FLAGS)]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 9, dev(2, 0, zeros(2))), 9, "faults")
    assert_rejects(prog, replaced(good, 12, thp_pages(0x200, 1, ZERO_HEAD_FLAGS,
                                                      ZERO_TAIL_FLAGS)), 12, "pagemap[0]")


ANOTHER_DEVICE_FAULTS_IT_BACK = """
    region a pages=1024
    p0 open d0 dmirror0
    p0 open d1 dmirror1
    p0 thp madvise madvise
    p0 map a[0:1024]
    p0 madvise a[0:512] hugepage
    p0 write a[0:512] seed=1
    p0 migrate_to_dev d0 a[0:512]
    p0 fork p1
    p1 open c1 dmirror1
    p1 dev_read c1 a[0:2]
    p1 pagemap a[0:2]
    p0 pagemap a[0:2]
    p1 snapshot c1 a[0:2]
    p0 snapshot d1 a[0:2]
    p0 write a[0:1] seed=4
    p1 read a[0:1]
    p0 read a[0:1]
"""


def test_another_device_faults_the_shared_device_thp_back_in_both():
    # hmm_range_fault of dmirror1 in the child: hmm_vma_handle_absent_pmd asks a fault on
    # another device's PMD, do_huge_pmd_device_private brings the THP back in both; the
    # parent's write then copies its page only.
    prog = program(ANOTHER_DEVICE_FAULTS_IT_BACK)
    data = patterns(prog, 1, "a", 0, 512)
    good = [ok(), ok(), ok(), ok(), ok(), wrote(512), dev(512, 0, data), ok(), ok(),
            dev(2, 1, data[:2]), thp_pages(0x200, 2), thp_pages(0x200, 2),
            snap(R_PMD, R_PMD), snap(R_PMD, R_PMD), wrote(1), cpu(data[0]),
            cpu(*patterns(prog, 4, "a", 0, 1))]
    assert_accepts(prog, *good)
    assert_rejects(prog, replaced(good, 15, cpu(*patterns(prog, 4, "a", 0, 1))), 15,
                   "pages[0]")


def test_fail_alloc_on_the_way_back_of_a_shared_device_thp_is_refused():
    # migrate_vma_split_unmapped_folio splits the faulting process's PMD migration entry
    # only; 7.2 then brought back page 0 alone, the rest staying device-private in both.
    prog = program("""
        region a pages=1024
        p0 open d0 dmirror0
        p0 map a[0:1024]
        p0 migrate_to_dev d0 a[0:512]
        p0 fork p1
        p0 flags d0 1
        p1 read a[0:1]
    """)
    from reference import check
    from test_model_support import trace
    verdict = check(prog, trace(ok(), ok(), dev(512, 0, zeros(512)), ok(),
                                OpResult(cpages=0, faults=0), cpu(*zeros(1))))
    assert verdict.ok and verdict.unmodelled_from == 5
    assert "several processes coming back as small pages" in verdict.unmodelled
