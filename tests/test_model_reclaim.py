"""madvise pageout/cold/free/willneed and swap-in, as the model states them (reference/
reclaim.py), each pinned to what 7.2.13, 6.12.117 and 6.1.192 did under QEMU
(tests/test_vm_model_reclaim.py runs the same programs on the kernels)."""

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, snap, trace, wrote, zeros,
)

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check, expected, uapi
from reference.pagemap import SWAP_TYPE

W, R, Z, NONE = uapi.PROT_WRITE, uapi.PROT_READ, uapi.PROT_ZERO, uapi.PROT_NONE
SD, EXCL, PRESENT, SWAP = 1 << 55, 1 << 56, 1 << 63, 1 << 62


ZERO_PAGE = PagemapEntry(PRESENT | SD | 0x100, 0, 1 << 24)   # the zero page (KPF_ZERO_PAGE)


def swapped(offset):
    return PagemapEntry(SWAP | SD | SWAP_TYPE | offset << 5)


def pm(*entries):
    return OpResult(pagemap=tuple(entries))


PAGEOUT = """
    region a pages=4
    p0 map a[0:4]
    p0 write a[0:3] seed=1
    p0 read a[3:4]
    p0 open d0 dmirror0
    p0 dev_read d0 a[0:4]
    p0 madvise a[0:4] pageout
    p0 pagemap a[0:3]
    p0 snapshot d0 a[0:4]
    p0 dev_read d0 a[0:4]
    p0 snapshot d0 a[0:4]
"""


def pageout_results(prog, offsets=(1, 2, 3)):
    data = patterns(prog, 1, "a", 0, 3)
    return [ok(), wrote(3), cpu(*zeros(1)), ok(), dev(4, 1, data + zeros(1)), ok(),
            pm(*map(swapped, offsets)),
            # swap entries are not valid without a fault; the zero page stays mirrored
            snap(NONE, NONE, NONE, Z | R),
            # try_to_unmap_one's MMU_NOTIFY_CLEAR erased pages 0..2 (and 3, by the quirk)
            dev(4, 1, data + zeros(1)),
            # do_swap_page maps an exclusive page writable even on the read fault
            snap(W, W, W, Z | R)]


def test_pageout_swaps_each_page_mapped_once_and_invalidates_the_mirror():
    prog = program(PAGEOUT)
    assert_accepts(prog, *pageout_results(prog))


def test_swap_offsets_are_the_kernels_choice_but_distinct():
    prog = program(PAGEOUT)
    assert_accepts(prog, *pageout_results(prog, offsets=(77, 5, 9)))
    assert_rejects(prog, pageout_results(prog, offsets=(4, 4, 9)), 6, "pagemap[1]")


def test_pageout_keeps_the_content():
    prog = program(PAGEOUT)
    results = pageout_results(prog)
    results[8] = dev(4, 1, zeros(4))     # a kernel that lost the swapped content
    assert_rejects(prog, results, 8, "pages[0]")


def test_a_read_swap_in_on_6_1_maps_read_only():
    prog = program(PAGEOUT)
    results = pageout_results(prog)
    # 6.1 do_swap_page: maybe_mkwrite only under FAULT_FLAG_WRITE
    results[6] = pm(*(PagemapEntry(SWAP | SD | o << 5) for o in (1, 2, 3)))
    results[9] = snap(R, R, R, Z | R)
    assert check(prog, trace(*results, release="6.1.192")).ok
    assert not check(prog, trace(*pageout_results(prog), release="6.1.192")).ok


def test_shared_pages_are_skipped_by_pageout():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 fork p1
        p1 write a[1:2] seed=2
        p0 madvise a[0:2] pageout
        p0 pagemap a[0:2]
    """)
    (allowed,) = expected(prog)[5]
    shared, alone = allowed.pagemap
    assert shared.flags & PRESENT and shared.count == 2    # folio_mapcount != 1: skipped
    assert alone.flags & SWAP                               # p1 copied it: p0's alone


def test_free_then_pageout_discards_what_no_cpu_store_dirtied():
    prog = program("""
        region a pages=3
        p0 map a[0:3]
        p0 write a[0:3] seed=1
        p0 madvise a[0:3] free
        p0 write a[1:2] seed=3
        p0 open d0 dmirror0
        p0 dev_write d0 a[2:3] seed=5
        p0 madvise a[0:3] pageout
        p0 read a[0:3]
        p0 madvise a[0:3] pageout
        p0 pagemap a[0:3]
    """)
    stored = patterns(prog, 3, "a", 1, 2)
    # page 0: clean lazyfree, discarded; page 1: the store redirtied it, reclaim maps it
    # again (and the second pageout swaps it); page 2: the device's write does not dirty
    # the page (dmirror_do_write writes through a kernel mapping), so it is discarded too
    assert_accepts(prog, ok(), wrote(3), ok(), wrote(1), ok(), dev(1, 1), ok(),
                   cpu(zeros(1)[0], stored[0], zeros(1)[0]), ok(),
                   pm(ZERO_PAGE, swapped(1), ZERO_PAGE))


def test_free_of_a_swapped_page_drops_the_swap_entry():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] pageout
        p0 madvise a[0:1] free
        p0 pagemap a[0:1]
        p0 read a[0:1]
    """)
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), pm(PagemapEntry(SD)), cpu(*zeros(1)))


def test_fork_shares_a_swap_entry_and_makes_it_non_exclusive():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] pageout
        p0 fork p1
        p1 exit
        p0 open d0 dmirror0
        p0 read a[0:1]
        p0 snapshot d0 a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    # 7.2: swap-in through the swap cache trusts only the (now cleared) exclusive bit
    assert_accepts(prog, ok(), wrote(1), ok(), ok(), ok(), ok(), cpu(*data), snap(R))
    # 6.12: a swap count of 1 reads into a fresh folio, "certainly exclusive"
    assert check(prog, trace(ok(), wrote(1), ok(), ok(), ok(), ok(), cpu(*data), snap(W),
                             release="6.12.117")).ok


KPF_OWNER_2 = 1 << 34   # PG_anon_exclusive


def test_every_process_swapping_in_a_shared_entry_maps_the_one_swap_cache_folio():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] pageout
        p0 fork p1
        p1 read a[0:1]
        p1 pagemap a[0:1]
        p0 pagemap a[0:1]
        p0 read a[0:1]
        p0 pagemap a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    for release in ("7.2.13", "6.12.117", "6.1.192"):
        allowed = expected(prog, release)
        assert allowed[4][0].pages == data and allowed[7][0].pages == data
        first, swapped, both = allowed[5][0].pagemap[0], allowed[6][0].pagemap[0], \
            allowed[8][0].pagemap[0]
        assert swapped.frame == "swp"
        # read-only, not PageAnonExclusive (the swap cache holds a reference), and p0's
        # swap-in finds the same folio in the swap cache
        assert first.count == 1 and not first.kflags & KPF_OWNER_2
        assert both.key == first.key and both.count == 2 and not both.kflags & KPF_OWNER_2


def test_a_write_to_a_swap_cache_folio_copies_while_another_entry_holds_the_slot():
    # wp_can_reuse_anon_folio: folio_free_swap fails while p1's swap entry refers to the
    # slot, so the swap cache keeps its reference: wp_page_copy (MMU_NOTIFY_CLEAR). p1 then
    # swaps in the untouched swap-cache folio.
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 madvise a[0:1] pageout
        p0 fork p1
        p0 open d0 dmirror0
        p0 read a[0:1]
        p0 pagemap a[0:1]
        p0 dev_read d0 a[0:2]
        p0 write a[0:1] seed=2
        p0 pagemap a[0:1]
        p0 dev_read d0 a[0:2]
        p1 read a[0:1]
        p1 pagemap a[0:1]
    """)
    for release in ("7.2.13", "6.12.117", "6.1.192"):
        allowed = expected(prog, release)
        assert len(allowed) == len(prog.ops)
        before, after, theirs = (allowed[i][0].pagemap[0] for i in (6, 9, 12))
        assert after.key != before.key and theirs.key == before.key
        assert allowed[10][0].faults == (1,)        # the copy's notifier erased the entry
        assert allowed[11][0].pages == patterns(prog, 1, "a", 0, 1)


def test_madvise_free_skips_a_swap_cache_folio_whose_slot_is_still_referenced():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 write a[0:1] seed=1
        p0 madvise a[0:1] pageout
        p0 fork p1
        p0 read a[0:1]
        p0 madvise a[0:1] free
        p0 madvise a[0:1] pageout
        p0 read a[0:1]
        p1 read a[0:1]
    """)
    data = patterns(prog, 1, "a", 0, 1)
    # not lazyfree: the pageout writes it back to its own slot instead of discarding it
    allowed = expected(prog)
    assert allowed[7][0].pages == data and allowed[8][0].pages == data


def test_6x_swap_readahead_makes_a_neighbours_later_swap_in_uncertain():
    # 6.x swapin_readahead (a swap-in that misses the swap cache, here of a shared slot)
    # may read a[1] into the swap cache; a[1] then has swap count 1 and a clear exclusive
    # bit: read outside the cache it is "certainly exclusive", from the cache it is not.
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 write a[0:4] seed=1
        p0 madvise a[0:4] pageout
        p0 fork p1
        p1 munmap a[1:2]
        p0 read a[0:1]
        p0 read a[1:2]
    """)
    data = patterns(prog, 1, "a", 0, 2)
    results = (ok(), wrote(4), ok(), ok(), ok(), cpu(data[0]), cpu(data[1]))
    verdict = check(prog, trace(*results, release="6.12.117"))
    assert verdict.unmodelled_op == ("a swap-in of a slot swap readahead may have read into "
                                     "the swap cache (6.x)")
    assert verdict.checked == 6
    assert check(prog, trace(*results)).ok     # 7.2 reads zram synchronously (swapin_sync)
