"""The ops beyond v1 on the real kernel: each test shows the kernel really did what the op
asks (device migration and release, HMM_DMIRROR_FLAGS, exit and close, madvise, mapping
kinds, mremap, mlock, pagemap), observed through the runner."""

from __future__ import annotations

import errno
import signal

import pytest

from harness.kernel import resolve_kernel
from harness.prog import Content, Ending, digest, parse_program
from harness.prog.device import PROT_DEV_PRIVATE_LOCAL, PROT_WRITE
from harness.prog.ops import Flags
from harness.vm.session import KernelSession

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


@pytest.fixture(scope="module", params=["7.2", "6.12", "6.1"])
def each_kernel(request, tmp_path_factory):
    kernel = resolve_kernel(request.param, log=print)
    with KernelSession(kernel, tmp_path_factory.mktemp(f"vm-ops-{request.param}")) as session:
        yield session


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
