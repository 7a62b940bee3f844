"""The ops beyond v1 on the real kernel: each test shows the kernel really did what the op
asks (device migration and release, HMM_DMIRROR_FLAGS, exit and close, madvise, mapping
kinds, mremap, mlock, pagemap; THP modes, compaction, soft-dirty, NUMA migration,
userfaultfd write-protection, KSM, smaps), observed through the runner."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest

from fuzz.replay import replay
from harness.prog import Content, Ending, digest, parse_program
from harness.prog.device import PROT_DEV_PRIVATE_LOCAL, PROT_WRITE
from harness.prog.ops import Flags

from conftest import kernel_fixture

pytestmark = pytest.mark.vm

DEV_PRIVATE_WRITE = PROT_DEV_PRIVATE_LOCAL | PROT_WRITE  # 0x22


def run(session, text):
    """Run the program; every op must have run. Returns (program, results by op)."""
    program = parse_program(text, "test")
    trace = session.run(program)
    assert trace.ending is Ending.COMPLETED, trace.console[-3000:]
    assert len(trace.results) == len(program.ops)
    return program, trace.results


def pattern(program, seed, region, page):
    """(crc, first word) of `seed`'s pattern at page `page` of `region`."""
    vpn = program.regions[region].address // 4096 + page
    return digest(Content(seed, vpn))


def seen(pages):
    return [(p.crc, p.first_word) for p in pages]


def flags_supported(release: str) -> bool:
    """HMM_DMIRROR_FLAGS is in 7.2's lib/test_hmm.c, not in 6.1's or 6.12's (their ioctl
    switch answers an unknown command with -EINVAL)."""
    major, minor = (int(x) for x in release.split(".")[:2])
    return (major, minor) > (6, 12)


# ---------------------------------------------------------------- device migration

def test_migrate_to_dev_moves_pages_to_the_device_and_a_cpu_read_brings_one_back(kernel_session):
    program, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=3
p0 open d0 dmirror0
p0 migrate_to_dev d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 pagemap a[0:4]
p0 read a[0:1]
p0 snapshot d0 a[0:4]
p0 pagemap a[0:2]
p0 migrate_to_sys d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 read a[0:4]
""")
    migrate = r[3]
    assert migrate.errno == 0 and migrate.cpages == 4
    # the device read back what it migrated
    assert seen(migrate.pages) == [pattern(program, 3, "a", i) for i in range(4)]
    assert list(r[4].snapshot) == [DEV_PRIVATE_WRITE] * 4
    # device-private pages are not present for the CPU: pagemap shows swap-like entries
    assert all(not e.present and e.swapped for e in r[5].pagemap)
    # the CPU read faults page 0 back (dmirror_devmem_fault) with the same content
    assert seen(r[6].pages) == [pattern(program, 3, "a", 0)]
    assert list(r[7].snapshot) == [PROT_WRITE] + [DEV_PRIVATE_WRITE] * 3
    assert r[8].pagemap[0].present and not r[8].pagemap[1].present
    # migrate_to_sys brings back the three pages still on the device
    assert r[9].errno == 0 and r[9].cpages == 3
    assert list(r[10].snapshot) == [PROT_WRITE] * 4
    assert seen(r[11].pages) == [pattern(program, 3, "a", i) for i in range(4)]


def test_migrate_to_dev_of_an_unmapped_range_fails(kernel_session):
    _, r = run(kernel_session, """\
region a pages=4
p0 open d0 dmirror0
p0 migrate_to_dev d0 a[0:4]
p0 migrate_to_sys d0 a[0:4]
""")
    assert r[1].errno == errno.EINVAL and r[1].cpages is None and r[1].pages == ()
    assert r[2].errno == errno.EINVAL


def test_release_evicts_device_pages_back_to_system_memory(kernel_session):
    program, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=5
p0 open d0 dmirror1
p0 migrate_to_dev d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 release d0
p0 pagemap a[0:4]
p0 read a[0:4]
p0 migrate_to_dev d0 a[0:2]
p0 snapshot d0 a[0:4]
""")
    assert list(r[4].snapshot) == [DEV_PRIVATE_WRITE] * 4
    assert r[5].errno == 0 and r[5].cpages == 0
    # dmirror_device_evict_chunk migrated every page back: present again, same bytes
    assert all(e.present for e in r[6].pagemap)
    assert seen(r[7].pages) == [pattern(program, 5, "a", i) for i in range(4)]
    # the device allocates a fresh chunk on the next migration
    assert r[8].errno == 0 and r[8].cpages == 2
    assert list(r[9].snapshot)[:2] == [DEV_PRIVATE_WRITE] * 2


def test_flags_fail_alloc_keeps_the_first_page_in_system_memory(kernel_session):
    _, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=1
p0 open d0 dmirror0
p0 flags d0 1
p0 migrate_to_dev d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 flags d0 0
""")
    if not flags_supported(kernel_session.hello.release):
        assert r[3].errno == errno.EINVAL and r[3].cpages is None
        assert list(r[5].snapshot) == [DEV_PRIVATE_WRITE] * 4
        return
    assert r[3].errno == 0 and (r[3].cpages, r[3].faults) == (0, 0)
    # HMM_DMIRROR_FLAG_FAIL_ALLOC: the first device page allocation fails, once
    assert list(r[5].snapshot) == [PROT_WRITE] + [DEV_PRIVATE_WRITE] * 3
    # the ioctl rejects npages == 0 before it looks at the command
    assert r[6].errno == errno.EINVAL


# ---------------------------------------------------------------- processes

def test_a_child_exits_and_the_parent_still_runs(kernel_session):
    program, r = run(kernel_session, """\
region a pages=2
p0 map a[0:2]
p0 write a[0:2] seed=1
p0 fork p1
p1 write a[0:1] seed=2
p1 pagemap a[0:2]
p1 exit
p0 pagemap a[0:2]
p0 read a[0:2]
""")
    assert r[5].errno == 0
    # after the fork both processes share page 1 (mapcount 2, not exclusive) ...
    assert r[4].pagemap[1].count == 2 and not r[4].pagemap[1].exclusive
    # ... and once the child is gone, the parent maps it alone again
    assert r[6].pagemap[1].count == 1 and r[6].pagemap[1].exclusive
    assert seen(r[7].pages) == [pattern(program, 1, "a", i) for i in range(2)]


def test_the_first_process_exits_and_its_child_goes_on(kernel_session):
    program, r = run(kernel_session, """\
region a pages=1
p0 map a[0:1]
p0 write a[0:1] seed=4
p0 fork p1
p0 exit
p1 read a[0:1]
p1 pagemap a[0:1]
""")
    assert seen(r[4].pages) == [pattern(program, 4, "a", 0)]
    assert r[5].pagemap[0].count == 1 and r[5].pagemap[0].exclusive


def test_an_inherited_fd_of_an_exited_parent_has_no_mm_left(kernel_session):
    _, r = run(kernel_session, """\
region a pages=1
p0 map a[0:1]
p0 open d0 dmirror0
p0 fork p1
p0 exit
p1 dev_read d0 a[0:1]
""")
    # the fd mirrors p0's mm, which is gone: dmirror_fault's mmget_not_zero() fails
    assert r[4].errno == errno.EFAULT


def test_close_in_a_child_leaves_the_parent_fd_open(kernel_session):
    _, r = run(kernel_session, """\
region a pages=1
p0 map a[0:1]
p0 open d0 dmirror0
p0 fork p1
p1 close d0
p1 open d0 dmirror1
p1 close d0
p0 dev_read d0 a[0:1]
p0 close d0
""")
    assert [x.errno for x in r] == [0] * 8
    assert r[6].cpages == 1


# ---------------------------------------------------------------- madvise

def test_madvise_dontneed_then_read_shows_zero(kernel_session):
    program, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=2
p0 madvise a[1:3] dontneed
p0 pagemap a[0:4]
p0 read a[0:4]
""")
    assert r[2].errno == 0
    assert [e.present for e in r[3].pagemap] == [True, False, False, True]
    got = seen(r[4].pages)
    assert got[0] == pattern(program, 2, "a", 0) and got[3] == pattern(program, 2, "a", 3)
    assert got[1] == got[2] == digest(Content())


def test_madvise_pageout_swaps_out_and_a_read_swaps_in(kernel_session):
    program, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=6
p0 pagemap a[0:4]
p0 madvise a[0:4] pageout
p0 pagemap a[0:4]
p0 read a[0:2]
p0 pagemap a[0:4]
""")
    before, after, back = r[2].pagemap, r[4].pagemap, r[6].pagemap
    assert all(e.present and e.exclusive and e.has_flag("ANON") for e in before)
    assert all(not e.present and e.swapped and e.pfn is None for e in after)
    assert seen(r[5].pages) == [pattern(program, 6, "a", i) for i in range(2)]
    assert [e.present for e in back] == [True, True, False, False]


def test_madvise_collapse_makes_a_thp(kernel_session):
    _, r = run(kernel_session, """\
region h pages=512
p0 map h[0:512]
p0 write h[0:512] seed=1
p0 pagemap h[0:2]
p0 madvise h[0:512] collapse
p0 pagemap h[0:2]
p0 madvise h[0:512] nohugepage
p0 madvise h[0:512] collapse
""")
    assert not r[2].pagemap[0].has_flag("THP")
    assert r[3].errno == 0
    head, tail = r[4].pagemap
    assert head.has_flag("THP") and head.has_flag("COMPOUND_HEAD")
    assert tail.has_flag("THP") and tail.has_flag("COMPOUND_TAIL")
    assert tail.pfn == head.pfn + 1
    # VM_NOHUGEPAGE forbids collapsing
    assert r[5].errno == 0 and r[6].errno == errno.EINVAL


def test_madvise_fork_advice_decides_what_a_child_sees(kernel_session):
    program, r = run(kernel_session, """\
region w pages=1
region d pages=1
p0 map w[0:1]
p0 map d[0:1]
p0 write w[0:1] seed=1
p0 write d[0:1] seed=1
p0 madvise w[0:1] wipeonfork
p0 madvise d[0:1] dontfork
p0 fork p1
p1 read w[0:1]
p1 read d[0:1]
p0 madvise w[0:1] keeponfork
p0 madvise d[0:1] dofork
p0 fork p2
p2 read w[0:1]
p2 read d[0:1]
""")
    assert seen(r[7].pages) == [digest(Content())]           # wiped
    assert r[8].pages[0].signal == signal.SIGSEGV            # not there at all
    assert seen(r[12].pages) == [pattern(program, 1, "w", 0)]
    assert seen(r[13].pages) == [pattern(program, 1, "d", 0)]


@pytest.mark.parametrize("advice", ["free", "cold", "willneed", "populate_read",
                                    "populate_write", "hugepage", "nohugepage",
                                    "mergeable", "unmergeable"])
def test_madvise_advice_on_private_anonymous_memory_succeeds(kernel_session, advice):
    _, r = run(kernel_session, f"""\
region a pages=4
p0 map a[0:4]
p0 write a[0:2] seed=1
p0 madvise a[0:4] {advice}
p0 pagemap a[0:4]
""")
    assert r[2].errno == 0
    if advice in ("populate_read", "populate_write"):
        assert all(e.present for e in r[3].pagemap)  # populated, pages 2 and 3 too


def test_madvise_on_an_unmapped_range_is_enomem(kernel_session):
    _, r = run(kernel_session, "region a pages=1\np0 madvise a[0:1] dontneed\n")
    assert r[0].errno == errno.ENOMEM


# ---------------------------------------------------------------- mapping kinds

def test_a_shared_anonymous_mapping_is_shared_with_a_child(kernel_session):
    program, r = run(kernel_session, """\
region s pages=2
p0 map s[0:2] shared
p0 write s[0:1] seed=1
p0 fork p1
p1 write s[1:2] seed=2
p0 read s[0:2]
p0 pagemap s[0:2]
""")
    assert seen(r[4].pages) == [pattern(program, 1, "s", 0), pattern(program, 2, "s", 1)]
    assert all(e.file_shared and not e.has_flag("ANON") for e in r[5].pagemap)


def test_memfd_mappings_of_a_region_share_one_object(kernel_session):
    program, r = run(kernel_session, """\
region m pages=4
p0 map m[0:4] memfd
p0 write m[1:2] seed=7
p0 munmap m[0:4]
p0 map m[1:3] memfd
p0 read m[1:3]
p0 fork p1
p1 munmap m[1:3]
p1 map m[0:2] memfd
p1 read m[0:2]
""")
    zero = digest(Content())
    # the page written through the first mapping survives munmap: it lives in the memfd
    assert seen(r[4].pages) == [pattern(program, 7, "m", 1), zero]
    assert seen(r[8].pages) == [zero, pattern(program, 7, "m", 1)]


def test_a_private_file_mapping_reads_the_file_and_copies_on_write(kernel_session):
    program, r = run(kernel_session, """\
region f pages=2
p0 map f[0:2] file
p0 read f[0:1]
p0 write f[1:2] seed=3
p0 pagemap f[0:2]
p0 munmap f[0:2]
p0 map f[0:2] file
p0 read f[0:2]
""")
    zero = digest(Content())
    assert seen(r[1].pages) == [zero]
    read_page, written = r[3].pagemap
    assert read_page.present and read_page.file_shared and not read_page.has_flag("ANON")
    assert written.present and not written.file_shared and written.has_flag("ANON")
    # the private write never reached the file
    assert seen(r[6].pages) == [zero, zero]


# ---------------------------------------------------------------- mremap, mlock

def test_mremap_grows_in_place(kernel_session):
    program, r = run(kernel_session, """\
region a pages=8
p0 map a[0:2]
p0 write a[0:2] seed=1
p0 read a[2:3]
p0 mremap a[0:2] 4
p0 read a[0:4]
p0 mremap a[0:4] 1
p0 read a[1:2]
""")
    zero = digest(Content())
    assert r[2].pages[0].signal == signal.SIGSEGV
    assert r[3].errno == 0
    assert seen(r[4].pages) == [pattern(program, 1, "a", 0), pattern(program, 1, "a", 1),
                                zero, zero]
    assert r[5].errno == 0 and r[6].pages[0].signal == signal.SIGSEGV


def test_mremap_moves_pages_and_dontunmap_leaves_the_old_range_empty(kernel_session):
    program, r = run(kernel_session, """\
region a pages=4
region b pages=4
p0 map a[0:2]
p0 write a[0:2] seed=1
p0 mremap a[0:2] b[2:4]
p0 read a[0:1]
p0 read b[2:4]
p0 mremap b[2:4] a[0:2] dontunmap
p0 read b[2:4]
p0 read a[0:2]
p0 mremap a[0:2] a[1:3]
""")
    moved = [pattern(program, 1, "a", i) for i in range(2)]  # the bytes keep their pattern
    assert r[2].errno == 0 and r[3].pages[0].signal == signal.SIGSEGV
    assert seen(r[4].pages) == moved
    assert r[5].errno == 0
    assert seen(r[6].pages) == [digest(Content())] * 2  # still mapped, now empty
    assert seen(r[7].pages) == moved
    assert r[8].errno == errno.EINVAL  # overlapping source and destination


def test_mlock_populates_and_munlock_unlocks(kernel_session):
    _, r = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 pagemap a[0:4]
p0 mlock a[0:4]
p0 pagemap a[0:4]
p0 munlock a[0:4]
p0 munlock a[0:4]
""")
    assert not any(e.present for e in r[1].pagemap)
    assert r[2].errno == 0 and all(e.present for e in r[3].pagemap)
    assert any(e.has_flag("UNEVICTABLE") for e in r[3].pagemap)
    assert r[4].errno == 0 and r[5].errno == 0


# ---------------------------------------------------------------- pagemap

def test_pagemap_of_untouched_read_and_written_pages(kernel_session):
    _, r = run(kernel_session, """\
region a pages=3
p0 map a[0:3]
p0 read a[1:2]
p0 write a[2:3] seed=1
p0 pagemap a[0:3]
p0 munmap a[0:3]
p0 pagemap a[0:1]
""")
    untouched, zero_page, written = r[3].pagemap
    assert untouched.entry & ~(1 << 55) == 0 and untouched.count is None
    assert zero_page.present and zero_page.has_flag("ZERO_PAGE")
    assert written.present and written.exclusive and written.count == 1
    assert written.has_flag("ANON") and not written.has_flag("ZERO_PAGE")
    assert r[5].errno == 0 and r[5].pagemap[0].entry == 0


# ---------------------------------------------------------------- on every kernel

EVERY_NEW_OP = """\
# every op beyond v1, at least once
region a pages=8
region m pages=4
region f pages=4
region s pages=4
p0 map a[0:8]
p0 write a[0:8] seed=1
p0 open d0 dmirror0
p0 migrate_to_dev d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 pagemap a[0:4]
p0 migrate_to_sys d0 a[0:2]
p0 release d0
p0 flags d0 1
p0 madvise a[4:6] dontneed
p0 read a[4:6]
p0 madvise a[6:8] pageout
p0 pagemap a[6:8]
p0 map m[0:4] memfd
p0 map f[0:4] file
p0 map s[0:2] shared
p0 write m[0:1] seed=2
p0 fork p1
p1 read m[0:1]
p1 close d0
p1 exit
p0 mremap s[0:2] 3
p0 mremap f[0:2] f[2:4]
p0 mremap a[0:2] s[3:4]
p0 mlock m[0:2]
p0 munlock m[0:2]
p0 madvise a[2:8] wipeonfork
p0 pagemap a[0:8]
"""


each_kernel = kernel_fixture("each_kernel")


def test_every_new_op_runs_on_each_kernel(each_kernel):
    program, r = run(each_kernel, EVERY_NEW_OP)
    ops = program.ops
    assert {op.keyword for op in ops} >= {
        "migrate_to_dev", "migrate_to_sys", "release", "flags", "exit", "close", "madvise",
        "mremap", "mlock", "munlock", "pagemap", "map"}
    assert r[3].cpages == 4 and seen(r[3].pages) == [pattern(program, 1, "a", i) for i in range(4)]
    assert list(r[4].snapshot) == [DEV_PRIVATE_WRITE] * 4
    assert len(r[5].pagemap) == 4 and not any(e.present for e in r[5].pagemap)
    assert r[6].cpages == 2 and r[7].errno == 0
    flags = r[8]
    assert isinstance(ops[8], Flags)
    expected_flags_errno = 0 if flags_supported(each_kernel.hello.release) else errno.EINVAL
    assert flags.errno == expected_flags_errno, each_kernel.hello.release
    assert seen(r[10].pages) == [digest(Content())] * 2
    assert all(e.swapped for e in r[12].pagemap)
    assert seen(r[18].pages) == [pattern(program, 2, "m", 0)]
    # the mremap that moves a[0:2] onto a 1-page range is a shrink-and-move, allowed
    others = [i for i in range(len(ops)) if i != 8]
    assert [r[i].errno for i in others] == [0] * len(others), [
        (str(ops[i].keyword), r[i].errno) for i in others if r[i].errno]
    assert len(r[-1].pagemap) == 8


# ---------------------------------------------------------------- kernel-wide ops, on every kernel

def version(session) -> tuple[int, int]:
    major, minor = (int(x) for x in session.hello.release.split(".")[:2])
    return major, minor


def test_thp_always_backs_a_2mib_aligned_region_with_a_thp(each_kernel):
    _, r = run(each_kernel, """\
region h pages=512
p0 thp always defer+madvise
p0 map h[0:512]
p0 write h[0:1] seed=1
p0 smaps h[0:512]
p0 pagemap h[0:2]
""")
    assert r[0].errno == 0
    # do_huge_pmd_anonymous_page: the first write fault maps the whole aligned 2 MiB
    (vma,) = r[3].smaps
    assert vma["AnonHugePages"] == 2048 and vma["Rss"] == 2048 and vma["Anonymous"] == 2048
    head, tail = r[4].pagemap
    assert head.has_flag("THP") and head.has_flag("COMPOUND_HEAD")
    assert tail.has_flag("COMPOUND_TAIL") and tail.pfn == head.pfn + 1


def test_every_program_starts_with_thp_never_whatever_the_last_one_set(each_kernel):
    run(each_kernel, "region h pages=512\np0 thp always always\n")
    _, r = run(each_kernel, """\
region h pages=512
p0 map h[0:512]
p0 write h[0:1] seed=1
p0 smaps h[0:512]
p0 madvise h[0:512] hugepage
p0 write h[511:512] seed=1
p0 smaps h[0:512]
""")
    # "never" ignores MADV_HUGEPAGE too: still one 4 KiB page per write
    assert r[2].smaps[0]["AnonHugePages"] == 0 and r[2].smaps[0]["Rss"] == 4
    assert r[5].smaps[0]["AnonHugePages"] == 0 and r[5].smaps[0]["Rss"] == 8


def test_thp_madvise_gives_a_thp_only_where_madv_hugepage_asked(each_kernel):
    _, r = run(each_kernel, """\
region plain pages=512
region huge pages=512
p0 thp madvise never
p0 map plain[0:512]
p0 map huge[0:512]
p0 madvise huge[0:512] hugepage
p0 write plain[0:1] seed=1
p0 write huge[0:1] seed=1
p0 smaps plain[0:512]
p0 smaps huge[0:512]
""")
    assert r[6].smaps[0]["AnonHugePages"] == 0
    assert r[7].smaps[0]["AnonHugePages"] == 2048


def test_compact_keeps_every_page_s_content(each_kernel):
    program, r = run(each_kernel, """\
region a pages=64
p0 map a[0:64]
p0 write a[0:64] seed=3
p0 compact
p0 read a[0:64]
""")
    assert r[2].errno == 0
    assert seen(r[3].pages) == [pattern(program, 3, "a", i) for i in range(64)]


def test_clear_soft_dirty_clears_the_bit_and_a_write_sets_it_again(each_kernel):
    _, r = run(each_kernel, """\
region a pages=2
p0 map a[0:2]
p0 write a[0:2] seed=1
p0 pagemap a[0:2]
p0 clear_soft_dirty
p0 pagemap a[0:2]
p0 write a[1:2] seed=2
p0 pagemap a[0:2]
p0 fork p1
p1 clear_soft_dirty
p0 pagemap a[0:2]
""")
    assert all(e.soft_dirty for e in r[2].pagemap)
    assert r[3].errno == 0 and not any(e.soft_dirty for e in r[4].pagemap)
    # clear_soft_refs_in_pte write-protected the pte: the write fault marks it dirty
    assert [e.soft_dirty for e in r[6].pagemap] == [False, True]
    # the child's clear_refs is about the child's page tables only
    assert [e.soft_dirty for e in r[9].pagemap] == [False, True]


def test_move_pages_moves_to_the_other_node_and_reports_each_page(each_kernel):
    _, r = run(each_kernel, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:3] seed=1
p0 move_pages a[0:4]
p0 move_pages a[0:3] 1
p0 move_pages a[0:4]
p0 move_pages a[0:1] 3
p0 read a[0:3]
""")
    # the runner runs programs on CPU 0, node 0: pages start there
    unpopulated = -errno.EFAULT if version(each_kernel) < (6, 12) else -errno.ENOENT
    assert r[2].node_status == (0, 0, 0, unpopulated)
    assert r[3].errno == 0 and r[3].node_status == (1, 1, 1)
    assert r[4].node_status == (1, 1, 1, unpopulated)
    # do_pages_move: a node without memory fails the whole call
    assert r[5].errno == errno.ENODEV


def test_mbind_moves_present_pages_and_places_later_faults(each_kernel):
    program, r = run(each_kernel, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:2] seed=1
p0 mbind a[0:4] 1
p0 write a[2:4] seed=1
p0 move_pages a[0:4]
p0 read a[0:4]
p0 mbind a[0:4] 3
""")
    assert r[2].errno == 0
    assert r[4].node_status == (1, 1, 1, 1)
    assert seen(r[5].pages) == [pattern(program, 1, "a", i) for i in range(4)]
    # a node without memory leaves no node to bind to (mpol_set_nodemask)
    assert r[6].errno == errno.EINVAL


def test_uffd_write_protect_sets_the_pagemap_bit_and_a_write_gets_sigbus(each_kernel):
    program, r = run(each_kernel, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=1
p0 uffd_register a[0:4]
p0 uffd_wp a[0:2] on
p0 pagemap a[0:4]
p0 write a[0:4] seed=2
p0 read a[0:4]
p0 uffd_wp a[0:1] off
p0 write a[0:2] seed=3
p0 pagemap a[0:2]
p0 uffd_unregister a[0:4]
p0 write a[1:2] seed=3
""")
    assert [x.errno for x in r] == [0] * len(r)
    assert [e.uffd_wp for e in r[4].pagemap] == [True, True, False, False]
    # UFFD_FEATURE_SIGBUS: handle_userfault answers the wp fault with VM_FAULT_SIGBUS
    assert [p.signal for p in r[5].pages] == [signal.SIGBUS, signal.SIGBUS, 0, 0]
    assert seen(r[6].pages) == [pattern(program, 1, "a", 0), pattern(program, 1, "a", 1),
                                pattern(program, 2, "a", 2), pattern(program, 2, "a", 3)]
    assert [p.signal for p in r[8].pages] == [0, signal.SIGBUS]
    assert [e.uffd_wp for e in r[9].pagemap] == [False, True]
    # unregistering clears the bit (userfaultfd_clear_vma): the write goes through
    assert r[11].pages[0].signal == 0


def test_the_device_sees_a_uffd_write_protected_page_as_a_fault(each_kernel):
    program, r = run(each_kernel, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=1
p0 open d0 dmirror0
p0 uffd_register a[0:4]
p0 uffd_wp a[0:4] on
p0 dev_read d0 a[0:1]
p0 dev_write d0 a[1:2] seed=2
p0 exclusive d0 a[2:3]
p0 migrate_to_dev d0 a[3:4]
p0 pagemap a[3:4]
p0 read a[3:4]
p0 write a[3:4] seed=2
""")
    # a read needs no write: hmm_range_fault mirrors the page
    assert r[5].errno == 0 and seen(r[5].pages) == [pattern(program, 1, "a", 0)]
    # the device's write fault reaches handle_userfault, SIGBUS: hmm_range_fault -EFAULT
    assert r[6].errno == errno.EFAULT
    # make_device_exclusive's write fault fails too; 6.1/6.12's dmirror_exclusive turns
    # any page it did not get into -EBUSY, 7.2 passes the fault's error on
    assert r[7].errno == (errno.EFAULT if version(each_kernel) > (6, 12) else errno.EBUSY)
    # migration copies the bit into the device-private entry and back
    assert r[8].errno == 0 and r[8].cpages == 1
    assert r[9].pagemap[0].swapped and r[9].pagemap[0].uffd_wp
    assert seen(r[10].pages) == [pattern(program, 1, "a", 3)]
    assert r[11].pages[0].signal == signal.SIGBUS


def test_ksm_merges_identical_pages_into_one_shared_page(each_kernel):
    program, r = run(each_kernel, """\
region a pages=4
region b pages=4
region z pages=8
p0 map a[0:4]
p0 write a[0:4] seed=1
p0 mremap a[0:4] b[0:4] dontunmap
p0 write a[0:4] seed=1
p0 map z[0:8]
p0 madvise z[0:8] populate_write
p0 madvise a[0:4] mergeable
p0 madvise b[0:4] mergeable
p0 madvise z[0:8] mergeable
p0 ksm_merge
p0 pagemap a[0:4]
p0 pagemap b[0:4]
p0 pagemap z[0:8]
p0 smaps z[0:8]
p0 write a[0:1] seed=3
p0 pagemap a[0:1]
p0 read b[0:1]
""")
    # b holds the bytes a had, and a was written with the same pattern again: each a[i]
    # equals b[i]; z is eight zero-filled pages
    ksm = r[9].ksm
    assert r[9].errno == 0 and ksm.full_scans >= 3
    assert (ksm.pages_shared, ksm.pages_sharing) == (4 + 1, 4 + 7)
    for a_page, b_page in zip(r[10].pagemap, r[11].pagemap):
        assert a_page.pfn == b_page.pfn and a_page.count == 2 and a_page.has_flag("KSM")
        assert not a_page.exclusive
    assert len({e.pfn for e in r[12].pagemap}) == 1 and r[12].pagemap[0].count == 8
    assert r[13].smaps[0]["Pss"] == 4 and r[13].smaps[0]["Shared_Dirty"] == 32
    # a write breaks the sharing: a private copy again
    fresh = r[15].pagemap[0]
    assert fresh.count == 1 and fresh.exclusive and fresh.pfn != r[10].pagemap[0].pfn
    assert seen(r[16].pages) == [pattern(program, 1, "a", 0)]


def test_smaps_reports_each_vma_overlapping_the_range(each_kernel):
    _, r = run(each_kernel, """\
region a pages=8
p0 map a[0:8]
p0 write a[0:8] seed=1
p0 mprotect a[2:4] r
p0 mlock a[6:8]
p0 madvise a[4:5] pageout
p0 smaps a[1:7]
p0 smaps a[3:4]
""")
    base = 0x2000_0000_0000
    vmas = r[5].smaps
    assert [(v.start - base) // 4096 for v in vmas] == [0, 2, 4, 6]
    assert [(v.end - base) // 4096 for v in vmas] == [2, 4, 6, 8]
    assert [v["Rss"] for v in vmas] == [8, 8, 4, 8]
    assert [v["Swap"] for v in vmas] == [0, 0, 4, 0]
    assert [v["Locked"] for v in vmas] == [0, 0, 0, 8]
    assert all(v["Anonymous"] == v["Rss"] and v["AnonHugePages"] == 0 for v in vmas)
    assert len(r[6].smaps) == 1 and r[6].smaps[0].start == base + 2 * 4096


# ---------------------------------------------------------------- corpus/ops seeds

OPS_CORPUS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "ops").glob("*.txt"))


@pytest.mark.parametrize("path", OPS_CORPUS, ids=[p.stem for p in OPS_CORPUS])
def test_each_ops_seed_runs_and_agrees_with_the_model_as_far_as_it_goes(each_kernel, path):
    replayed = replay(each_kernel, path)
    verdict = replayed.verdict
    assert verdict.trace.ending is Ending.COMPLETED, verdict.trace.console[-3000:]
    assert not verdict.reports, [report.title for report in verdict.reports]
    # the model checks every op it states and refuses, by name, the first it does not
    assert not verdict.model.divergences, "\n".join(verdict.lines())
    assert verdict.model.unmodelled_from is None or verdict.model.unmodelled
    assert verdict.leak is None


def test_ksm_merge_with_nothing_mergeable_does_no_full_scan_and_merges_nothing(each_kernel):
    # the program before merged pages: every program starts with KSM unmerged and empty
    test_ksm_merges_identical_pages_into_one_shared_page(each_kernel)
    _, r = run(each_kernel, """\
region a pages=2
p0 map a[0:2]
p0 madvise a[0:2] populate_write
p0 ksm_merge
p0 pagemap a[0:2]
""")
    # ksmd completes at most one full scan (of its old cursor) when no mm asked for merging
    assert r[2].errno == 0 and r[2].ksm.full_scans <= 1
    assert (r[2].ksm.pages_shared, r[2].ksm.pages_sharing) == (0, 0)
    for entry in r[3].pagemap:
        assert entry.count == 1
        # 6.12's stable_page_flags tests `mapping & PAGE_MAPPING_KSM`, and PAGE_MAPPING_KSM
        # is PAGE_MAPPING_ANON | PAGE_MAPPING_MOVABLE: every anonymous page shows KPF_KSM
        # there (6.1 asks PageKsm, 7.2 compares all the mapping flag bits)
        assert entry.has_flag("KSM") == (version(each_kernel) == (6, 12))
    assert r[3].pagemap[0].pfn != r[3].pagemap[1].pfn
