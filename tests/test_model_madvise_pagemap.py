"""madvise on private anonymous memory and the `pagemap` op, pinned to what 7.2.13 (and, for
the profile switches, 6.12.117 and 6.1.192) reported under QEMU."""

import errno

from test_model_support import (
    assert_accepts, assert_rejects, cpu, dev, ok, patterns, program, snap, trace, wrote, zeros,
)

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check, uapi

W, Z, R = uapi.PROT_WRITE, uapi.PROT_ZERO, uapi.PROT_READ
DEV_W = uapi.PROT_DEV_PRIVATE_LOCAL | uapi.PROT_WRITE


def test_madvise_dontneed_zaps_and_free_invalidates_but_keeps_the_content():
    prog = program("""
        region a pages=8
        p0 map a[0:8]
        p0 write a[0:8] seed=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:8]
        p0 madvise a[0:1] willneed
        p0 dev_read d0 a[0:8]
        p0 madvise a[0:1] cold
        p0 dev_read d0 a[0:8]
        p0 madvise a[2:3] free
        p0 dev_read d0 a[0:8]
        p0 read a[0:8]
        p0 madvise a[4:5] dontneed
        p0 dev_read d0 a[0:8]
        p0 snapshot d0 a[0:8]
    """)
    data = patterns(prog, 1, "a", 0, 8)
    gone = data[:4] + zeros(1) + data[5:]
    assert_accepts(prog, ok(), wrote(8), ok(), dev(8, 1, data),
                   ok(), dev(8, 0, data),      # willneed: nothing
                   ok(), dev(8, 0, data),      # cold: young bits only, no invalidation
                   ok(), dev(8, 1, data),      # free: MMU_NOTIFY_CLEAR, content stays
                   cpu(*data),
                   ok(), dev(8, 1, gone),      # dontneed: zapped, reads the zero page
                   snap(W, W, W, W, Z | R, W, W, W))


def test_madvise_over_a_hole_is_enomem_and_still_advises_the_mapped_part():
    prog = program("""
        region a pages=4
        p0 map a[0:2]
        p0 write a[0:2] seed=1
        p0 madvise a[0:4] dontneed
        p0 read a[0:2]
        p0 madvise a[0:1] populate_write
        p0 madvise a[1:2] populate_read
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:2]
    """)
    assert_accepts(prog, ok(), wrote(2), OpResult(errno=errno.ENOMEM), cpu(*zeros(2)), ok(),
                   ok(), ok(), snap(W, Z | R))


POPULATE_PAST_A_HOLE_AND_A_READ_ONLY_VMA = """
    region a pages=8
    p0 map a[0:2]
    p0 map a[3:8]
    p0 mprotect a[5:6] r
    p0 madvise a[0:8] populate_write
    p0 open d0 dmirror0
    p0 snapshot d0 a[0:8]
"""


def test_populate_stops_at_the_first_hole_on_72_and_612():
    # faultin_page_range: a[0:2] populated, then no VMA at a[2] -> -ENOMEM; a[3:8] untouched
    prog = program(POPULATE_PAST_A_HOLE_AND_A_READ_ONLY_VMA)
    N, E = uapi.PROT_NONE, uapi.PROT_ERROR
    for release in ("7.2.13", "6.12.117"):
        verdict = check(prog, trace(ok(), ok(), ok(), OpResult(errno=errno.ENOMEM), ok(),
                                    snap(W, W, E, N, N, N, N, N), release=release))
        assert verdict.ok, str(verdict)


def test_populate_on_61_walks_every_vma_and_stops_at_a_read_only_one():
    # madvise_walk_vmas skips the hole, populates a[3:5], then check_vma_flags refuses the
    # read-only a[5] -> -EINVAL before a[6:8]
    prog = program(POPULATE_PAST_A_HOLE_AND_A_READ_ONLY_VMA)
    N, E = uapi.PROT_NONE, uapi.PROT_ERROR
    verdict = check(prog, trace(ok(), ok(), ok(), OpResult(errno=errno.EINVAL), ok(),
                                snap(W, W, E, W, W, N, N, N), release="6.1.192"))
    assert verdict.ok, str(verdict)
    verdict = check(prog, trace(ok(), ok(), ok(), OpResult(errno=errno.ENOMEM), ok(),
                                snap(W, W, E, N, N, N, N, N), release="6.1.192"))
    assert [d.field for d in verdict.divergences][:1] == ["errno"]


def test_populate_read_of_a_prot_none_vma_is_einval_after_the_pages_before_it():
    prog = program("""
        region a pages=4
        p0 map a[0:3]
        p0 mprotect a[1:2] none
        p0 madvise a[0:4] populate_read
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:4]
    """)
    N, E = uapi.PROT_NONE, uapi.PROT_ERROR
    for release in ("7.2.13", "6.12.117", "6.1.192"):
        verdict = check(prog, trace(ok(), ok(), OpResult(errno=errno.EINVAL), ok(),
                                    snap(Z | R, E, N, E), release=release))
        assert verdict.ok, str(verdict)


def test_thp_collapse_is_refused_by_name_before_7_2():
    prog = program("region a pages=1\np0 map a[0:1]\np0 madvise a[0:1] collapse\n")
    verdict = check(prog, trace(ok(), ok(), release="6.12.117"))
    assert verdict.unmodelled_op == "madvise collapse before 7.2"


# ---------------------------------------------------------------- pagemap

SD, EXCL, PRESENT, SWAP = 1 << 55, 1 << 56, 1 << 63, 1 << 62
ANON, ZERO_PAGE, ANON_EXCL = 1 << 12, 1 << 24, 1 << 34
LRU_ETC = 0x5828 & ~ANON          # UPTODATE|LRU|MMAP|SWAPBACKED: not stated


def present(pfn, count, flags):
    return PagemapEntry(PRESENT | SD | (EXCL if count == 1 and flags & ANON else 0) | pfn,
                        count, flags)


def pm(*entries):
    return OpResult(pagemap=tuple(entries))


PAGEMAP = """
    region a pages=6
    p0 map a[0:6]
    p0 read a[0:2]
    p0 write a[2:4] seed=1
    p0 pagemap a[0:6]
    p0 open d0 dmirror0
    p0 exclusive d0 a[2:3]
    p0 pagemap a[0:6]
    p0 fork p1
    p1 write a[3:4] seed=2
    p0 pagemap a[0:6]
    p1 pagemap a[0:6]
    p0 munmap a[0:6]
    p0 pagemap a[0:1]
"""


def pagemap_results(prog, zero=0x181A, f2=0x3EC55, f3=0x3EC44, f4=0x3EC46):
    zp = PagemapEntry(PRESENT | SD | zero, 0, ZERO_PAGE | (1 << 32))
    none = PagemapEntry(SD)
    mine = ANON | ANON_EXCL | LRU_ETC
    data = patterns(prog, 1, "a", 2, 3)
    return [ok(), cpu(*zeros(2)), wrote(2),
            pm(zp, zp, present(f2, 1, mine), present(f3, 1, mine), none, none),
            ok(), dev(1, 0, data),
            # 7.2: a device-exclusive entry is swap type 30 with the folio's own PFN
            pm(zp, zp, PagemapEntry(SWAP | SD | 30 | f2 << 5), present(f3, 1, mine), none,
               none),
            ok(), wrote(1),
            # after the fork: page 2 shared; page 3 copied by p1, p0's is mapped once but no
            # longer PageAnonExclusive
            pm(zp, zp, present(f2, 2, ANON | LRU_ETC), present(f3, 1, ANON | LRU_ETC), none,
               none),
            pm(zp, zp, present(f2, 2, ANON | LRU_ETC), present(f4, 1, mine), none, none),
            ok(), pm(PagemapEntry(0))]


def test_pagemap_bits_counts_and_pfns_as_the_kernel_showed_them():
    prog = program(PAGEMAP)
    assert_accepts(prog, *pagemap_results(prog))


def test_pagemap_pfns_are_compared_by_structure():
    prog = program(PAGEMAP)
    # any PFNs will do as long as equal pages agree and different folios differ
    assert_accepts(prog, *pagemap_results(prog, zero=0x10, f2=0x20, f3=0x30, f4=0x40))
    # the copy p1 made may not share p0's PFN
    assert_rejects(prog, pagemap_results(prog, f4=0x3EC44), 10, "pagemap[3]")
    # a folio keeps its PFN: the device-exclusive entry must name the PFN page 2 showed
    results = pagemap_results(prog)
    results[6] = pm(*results[6].pagemap[:2], PagemapEntry(SWAP | SD | 30 | 0x999 << 5),
                    *results[6].pagemap[3:])
    assert_rejects(prog, results, 6, "pagemap[2]")


def test_pagemap_rejects_a_wrong_mapcount_or_exclusive_bit():
    prog = program(PAGEMAP)
    results = pagemap_results(prog)
    entries = list(results[9].pagemap)
    entries[2] = PagemapEntry(entries[2].entry | EXCL, 2, entries[2].flags)
    results[9] = pm(*entries)
    assert_rejects(prog, results, 9, "pagemap[2]")


def test_device_private_entries_in_pagemap_per_profile():
    prog = program("""
        region a pages=2
        p0 map a[0:2]
        p0 write a[0:2] seed=3
        p0 open d0 dmirror0
        p0 migrate_to_dev d0 a[0:2]
        p0 pagemap a[0:2]
    """)
    data = patterns(prog, 3, "a", 0, 2)
    # observed: 7.2.13 type 28, 6.12.117 type 27, 6.1.192 type 26 with PM_MMAP_EXCLUSIVE
    for release, swp_type, extra in (("7.2.13", 28, 0), ("6.12.117", 27, 0),
                                     ("6.1.192", 26, EXCL)):
        entries = [PagemapEntry(SWAP | SD | extra | swp_type | pfn << 5)
                   for pfn in (0xFCFFFFF, 0xFCFFFFE)]
        verdict = check(prog, trace(ok(), wrote(2), ok(), dev(2, 0, data), pm(*entries),
                                    release=release))
        assert verdict.ok, (release, str(verdict))
