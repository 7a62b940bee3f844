"""madvise collapse (reference/collapse.py, mm/khugepaged.c madvise_collapse), pinned to what
7.2.13 showed under QEMU: a forced collapse ignores the THP mode, copies every kind of entry
into a new PMD-mapped THP (swap, device-private and device-exclusive entries are faulted in
first), fires one MMU_NOTIFY_CLEAR over the 2 MiB, and fails with -EINVAL where
collapse_possible or the PTE table is missing."""

import signal

from test_model_support import (
    ENOMEM, assert_accepts, assert_rejects, cpu, dev, err, ok, patterns, program, trace,
    wrote, zeros,
)
from test_model_thp import NONE, huge_zero, pm, small, thp_page

from harness.prog import OpResult, Page
from reference import check

EINVAL = 22


def test_a_collapse_copies_the_pages_into_a_pmd_mapped_thp_even_with_thp_never():
    prog = program("""
        region a pages=1024
        p0 map a[0:1024]
        p0 write a[0:512] seed=1
        p0 pagemap a[0:2]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
        p0 pagemap a[511:512]
        p0 read a[0:512]
    """)
    assert_accepts(prog, ok(), wrote(512), pm(small(0x1000), small(0x1003)), ok(),
                   pm(thp_page(0x1e00, 0), thp_page(0x1e00, 1)), pm(thp_page(0x1e00, 511)),
                   cpu(*patterns(prog, 1, "a", 0, 512)))


def test_the_new_thp_is_writable_only_with_vm_write():
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 mprotect a[0:512] r
        p0 madvise a[0:512] collapse
        p0 open d dmirror0
        p0 snapshot d a[0:1]
    """)
    from reference import uapi
    read_pmd = uapi.PROT_READ | uapi.PROT_PMD
    assert_accepts(prog, ok(), wrote(512), ok(), ok(), ok(),
                   OpResult(cpages=1, faults=0, snapshot=bytes([read_pmd])))


def test_collapse_possible_wants_an_anon_vma_a_whole_aligned_2mib_and_no_nohugepage():
    prog = program("""
        region a pages=512
        region b pages=100
        p0 map a[0:512]
        p0 map b[0:100]
        p0 madvise a[0:512] collapse
        p0 write b[0:1] seed=1
        p0 madvise b[0:100] collapse
        p0 write a[0:1] seed=2
        p0 madvise a[0:512] nohugepage
        p0 madvise a[0:512] collapse
        p0 madvise a[0:512] hugepage
        p0 madvise a[0:512] collapse
    """)
    assert_accepts(prog, ok(), ok(), err(EINVAL), wrote(1), err(EINVAL), wrote(1), ok(),
                   err(EINVAL), ok(), ok())


def test_a_range_without_an_aligned_2mib_does_nothing_and_succeeds():
    prog = program("""
        region a pages=1024
        p0 map a[0:1024]
        p0 write a[0:1] seed=1
        p0 madvise a[1:600] collapse
        p0 pagemap a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), pm(small(0x1000)))


def test_a_pmd_without_a_pte_table_is_einval_and_one_with_only_none_entries_a_zeroed_thp():
    prog = program("""
        region a pages=1024
        p0 map a[0:1024]
        p0 write a[5:6] seed=1
        p0 madvise a[5:6] dontneed
        p0 madvise a[0:512] collapse
        p0 pagemap a[4:6]
        p0 read a[5:6]
        p0 madvise a[512:1024] collapse
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), ok(),
                   pm(thp_page(0x1e00, 4), thp_page(0x1e00, 5)), cpu(*zeros(1)), err(EINVAL))


def test_the_pmd_without_a_table_still_lets_the_other_pmds_collapse():
    prog = program("""
        region a pages=1024
        p0 map a[0:1024]
        p0 write a[512:513] seed=1
        p0 madvise a[0:1024] collapse
        p0 pagemap a[512:513]
    """)
    assert_accepts(prog, ok(), wrote(1), err(EINVAL), pm(thp_page(0x1e00, 0)))


def test_a_pmd_mapping_is_left_as_it_is():
    prog = program("""
        region a pages=1024
        p0 thp always madvise
        p0 map a[0:1024]
        p0 read a[0:1]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), cpu(*zeros(1)), ok(), pm(huge_zero(0), huge_zero(1)))


def test_swap_device_private_and_device_exclusive_entries_are_faulted_in_first():
    prog = program("""
        region a pages=512
        p0 open d dmirror0
        p0 open e dmirror1
        p0 map a[0:512]
        p0 write a[0:512] seed=3
        p0 madvise a[0:8] pageout
        p0 migrate_to_dev d a[8:16]
        p0 exclusive e a[16:24]
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:1]
        p0 pagemap a[8:9]
        p0 pagemap a[16:17]
        p0 read a[0:24]
        p0 check_exclusive e a[16:24]
    """)
    results = [ok(), ok(), ok(), wrote(512), ok(), dev(8, 0, patterns(prog, 3, "a", 8, 16)),
               dev(8, 0, patterns(prog, 3, "a", 16, 24)), ok(),
               pm(thp_page(0x1e00, 0)), pm(thp_page(0x1e00, 8)), pm(thp_page(0x1e00, 16)),
               cpu(*patterns(prog, 3, "a", 0, 24)), dev(0, 0)]
    assert_accepts(prog, *results)
    results[8] = pm(NONE)
    assert_rejects(prog, results, 8, "pagemap[0]")


def test_the_collapse_notifier_erases_the_2mib_and_the_page_after_it():
    prog = program("""
        region a pages=1024
        p0 open d dmirror0
        p0 map a[0:1024]
        p0 write a[0:512] seed=1
        p0 dev_read d a[0:514]
        p0 madvise a[0:512] collapse
        p0 dev_read d a[513:514]
        p0 dev_read d a[512:513]
        p0 dev_read d a[0:1]
    """)
    read = dev(514, 1, patterns(prog, 1, "a", 0, 512) + zeros(2))
    assert_accepts(prog, ok(), ok(), wrote(512), read, ok(), dev(1, 0, zeros(1)),
                   dev(1, 1, zeros(1)), dev(1, 1, patterns(prog, 1, "a", 0, 1)))


def test_a_fork_child_keeps_the_old_pages():
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:512] seed=4
        p0 fork p1
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:1]
        p1 pagemap a[0:1]
        p1 read a[0:4]
    """)
    old = small(0x1ca0)
    shared_once = type(old)(old.entry, 1, old.flags & ~(1 << 34))   # fork cleared AnonExclusive
    assert_accepts(prog, ok(), wrote(512), ok(), ok(), pm(thp_page(0x1e00, 0)),
                   pm(shared_once), cpu(*patterns(prog, 4, "a", 0, 4)))


def test_the_thp_allocation_may_fail_with_enomem_and_nothing_changes():
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:2] seed=1
        p0 madvise a[0:512] collapse
        p0 pagemap a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(2), err(ENOMEM), pm(small(0x1000)))


def test_the_thp_lands_on_the_node_most_of_the_pages_are_on():
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 mbind a[0:512] 1
        p0 write a[0:512] seed=5
        p0 madvise a[0:512] collapse
        p0 move_pages a[0:2]
    """)
    assert_accepts(prog, ok(), ok(), wrote(512), ok(), OpResult(node_status=(1, 1)))
    assert_rejects(prog, [ok(), ok(), wrote(512), ok(), OpResult(node_status=(0, 0))], 4,
                   "node_status[0]")


def test_what_is_not_stated_is_refused_by_name():
    cases = {
        "region a pages=512\np0 map a[0:512] file\np0 madvise a[0:512] collapse\n":
            "madvise collapse of a shmem or file mapping",
        "region a pages=512\np0 map a[0:512]\np0 uffd_register a[0:512]\n"
        "p0 madvise a[0:512] collapse\n":
            "madvise collapse with userfaultfd-wp registered memory",
    }
    for text, name in cases.items():
        prog = program(text)
        assert check(prog, trace(*[ok()] * len(prog.ops))).unmodelled_op == name


def test_a_thp_made_by_collapse_is_write_protected_as_one_by_uffd_wp():
    # change_huge_pmd puts the uffd-wp bit on the PMD the collapse installed, and a store
    # then meets userfaultfd_huge_pmd_wp (SIGBUS); whatever the THP mode (7.2.13: SIGBUS, pagemap
    # of a tail page present|exclusive|uffd_wp|soft_dirty, THP)
    prog = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 madvise a[0:512] collapse
        p0 uffd_register a[0:512]
        p0 uffd_wp a[0:512] on
        p0 write a[7:8] seed=2
    """)
    bus = Page(signal=int(signal.SIGBUS))
    good = [ok(), wrote(512), ok(), ok(), ok(), cpu(bus)]
    verdict = check(prog, trace(*good))
    assert verdict.ok and verdict.checked == len(good), str(verdict)
    assert check(prog, trace(*good[:5], wrote(1))).divergences


def test_turning_thp_on_where_khugepaged_may_collapse_is_refused():
    """Program mms are registered with khugepaged from their fork (the runner's mm is),
    so its start scan may collapse a PMD with a PTE table holding a page, in a VMA it may
    collapse: 7.2 collapsed a[0:512] with two pages written, after `thp always`."""
    refused = program("""
        region a pages=512
        p0 map a[0:512]
        p0 write a[4:6] seed=1
        p0 thp always never
    """)
    verdict = check(refused, trace(ok(), wrote(2), ok()))
    assert verdict.unmodelled_op == "thp turned on where khugepaged may collapse"
    for text in ("""
            region a pages=512
            p0 map a[0:512]
            p0 write a[4:6] seed=1
            p0 thp madvise never
        """, """
            region a pages=512
            p0 map a[0:512]
            p0 read a[4:6]
            p0 thp always never
        """, """
            region a pages=512
            p0 map a[0:511]
            p0 write a[4:6] seed=1
            p0 thp always never
        """):
        prog = program(text)
        read = cpu(*zeros(2)) if "read" in text else wrote(2)
        assert_accepts(prog, ok(), read, ok())
