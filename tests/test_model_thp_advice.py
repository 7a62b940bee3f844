"""madvise cold, pageout and free where they meet a THP (reference/thp_split.py), pinned to
what 7.2.13 showed under QEMU: a range covering part of a THP splits it into order-0 folios
at the same PFNs, under try_to_migrate's notifiers; cold of a whole THP changes nothing."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, trace, wrote, zeros,
)
from test_model_thp import pm, small, thp_page

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check, uapi

SD = 1 << 55
W = uapi.PROT_WRITE


def test_cold_over_part_of_a_pmd_mapped_thp_splits_it_in_place():
    prog = program("""
        region a pages=1024
        p0 thp always madvise
        p0 open d dmirror0
        p0 map a[0:1024]
        p0 write a[0:512] seed=1
        p0 dev_read d a[0:514]
        p0 madvise a[0:100] cold
        p0 pagemap a[0:2]
        p0 pagemap a[100:101]
        p0 dev_read d a[513:514]
        p0 dev_read d a[512:513]
        p0 snapshot d a[0:2]
    """)
    data = patterns(prog, 1, "a", 0, 512)
    results = [ok(), ok(), ok(), wrote(512), dev(514, 1, data + zeros(2)), ok(),
               pm(thp_page(0x200, 0), thp_page(0x200, 1)), pm(thp_page(0x200, 100)),
               dev(1, 0, zeros(1)), dev(1, 1, zeros(1)), OpResult(cpages=2, faults=0,
                                                                  snapshot=bytes([W, W]))]
    # the THP's PFNs are learned first, then the split pages keep them
    results[6] = pm(small(0x200), small(0x201))
    results[7] = pm(small(0x264))
    assert_accepts(prog, *results)
    still_huge = list(results)
    still_huge[6] = pm(thp_page(0x200, 0), thp_page(0x200, 1))
    assert_rejects(prog, still_huge, 6, "pagemap[0]")


def test_cold_over_a_whole_thp_changes_nothing():
    prog = program("""
        region b pages=512
        p0 thp always madvise
        p0 open d dmirror0
        p0 map b[0:512]
        p0 write b[0:512] seed=2
        p0 dev_read d b[0:2]
        p0 madvise b[0:512] cold
        p0 pagemap b[0:2]
        p0 dev_read d b[0:2]
    """)
    data = patterns(prog, 2, "b", 0, 2)
    assert_accepts(prog, ok(), ok(), ok(), wrote(512), dev(2, 1, data), ok(),
                   pm(thp_page(0x1e00, 0), thp_page(0x1e00, 1)), dev(2, 0, data))


def test_pageout_and_free_of_part_of_a_thp_act_on_the_split_pages():
    prog = program("""
        region c pages=512
        region e pages=512
        p0 thp always madvise
        p0 map c[0:512]
        p0 write c[0:512] seed=3
        p0 madvise c[0:10] pageout
        p0 pagemap c[10:11]
        p0 read c[0:12]
        p0 map e[0:512]
        p0 write e[0:512] seed=4
        p0 madvise e[0:10] free
        p0 madvise e[0:20] pageout
        p0 read e[0:12]
    """)
    c = patterns(prog, 3, "c", 0, 12)
    e = patterns(prog, 4, "e", 0, 12)
    assert_accepts(prog, ok(), ok(), wrote(512), ok(), pm(small(0x1e0a)), cpu(*c), ok(),
                   wrote(512), ok(), ok(), cpu(*zeros(10), *e[10:]))


def test_a_thp_split_notifies_every_vma_of_the_2mib_up_to_its_last_page():
    prog = program("""
        region a pages=512
        p0 thp always madvise
        p0 open d dmirror0
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 pagemap a[0:1]
        p0 mprotect a[0:256] r
        p0 dev_read d a[0:2]
        p0 dev_read d a[300:302]
        p0 madvise a[300:310] cold
        p0 dev_read d a[0:2]
    """)
    low, high = patterns(prog, 1, "a", 0, 2), patterns(prog, 1, "a", 300, 302)
    # (the pagemap shows the write mapped a THP: the allocation did not fail)
    results = [ok(), ok(), ok(), wrote(512), pm(thp_page(0x3a00, 0)), ok(), dev(2, 1, low),
               dev(2, 1, high), ok(), dev(2, 1, low)]
    assert_accepts(prog, *results)
    results[9] = dev(2, 0, low)
    assert_rejects(prog, results, 9, "faults")


def test_whole_thp_pageout_and_free_and_shared_thps_are_refused_by_name():
    base = """
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 write a[0:1] seed=1
    """
    cases = (("p0 madvise a[0:512] pageout", "madvise pageout of a whole THP"),
             ("p0 madvise a[0:512] free", "madvise free of a whole THP"),
             ("p0 fork p1\n    p0 madvise a[0:100] pageout",
              "madvise pageout of a THP another process maps"),
             ("p0 fork p1\n    p1 exit\n    p0 madvise a[0:100] cold",
              "madvise cold of a THP shared after a fork"))
    for op, name in cases:
        prog = program(base + "    " + op)
        verdict = check(prog, trace(ok(), ok(), wrote(1), *[ok()] * (len(prog.ops) - 3)))
        assert verdict.unmodelled_op == name, (op, verdict)


def test_cold_leaves_a_thp_another_process_maps_alone():
    prog = program("""
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 write a[0:512] seed=1
        p0 fork p1
        p0 madvise a[0:100] cold
        p0 pagemap a[0:1]
    """)
    shared = PagemapEntry(SD | (1 << 63) | 0x3c00, 2, thp_page(0x3c00, 0).flags & ~(1 << 34))
    assert_accepts(prog, ok(), ok(), wrote(512), ok(), ok(), pm(shared))


def test_a_split_maps_the_zero_filled_pages_as_the_shared_zero_page():
    """remap_page(TTU_USE_SHARED_ZEROPAGE): try_to_map_unused_to_zeropage frees a page of
    the split folio that holds only zeroes and maps the zero page there (7.2: move_pages
    then says -EFAULT, as for every zero page)."""
    prog = program("""
        region a pages=512
        p0 thp always madvise
        p0 map a[0:512]
        p0 write a[4:5] seed=1
        p0 pagemap a[4:5]
        p0 madvise a[67:81] free
        p0 move_pages a[3:6]
        p0 read a[3:6]
    """)
    efault = -14
    results = [ok(), ok(), wrote(1), pm(thp_page(0x3a00, 4)), ok(),
               OpResult(node_status=(efault, 0, efault)),
               cpu(zeros(1)[0], patterns(prog, 1, "a", 4, 5)[0], zeros(1)[0])]
    assert_accepts(prog, *results)
    results[5] = OpResult(node_status=(0, 0, 0))
    assert_rejects(prog, results, 5, "node_status[0]")
