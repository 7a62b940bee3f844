"""Device-coherent memory (MEMORY_DEVICE_COHERENT) on the real kernels: /dev/hmm_dmirror2
and 3 exist because the guest reserves a 256 MiB chunk of RAM for each (harness/vm/qemu.py)
and passes its address to test_hmm (spm_addr_dev0/1). Unlike device-private memory, a
coherent page is ordinary CPU-addressable memory: after migrate_to_dev the process's PTE maps
the device page itself, so the CPU reads and writes it in place and nothing migrates back
until the owning device asks for it (migrate_to_sys, or the eviction of the device's chunks
when one of its fds is closed). Expectations below cite the 7.2 source; 6.1.192 and
6.12.117 have the same code paths (checked in their lib/test_hmm.c and mm/migrate_device.c).
"""

from __future__ import annotations

import signal

import pytest

from harness.prog import Content, Ending, digest, parse_program
from harness.prog.observation import KPF
from harness.prog.device import (
    PROT_DEV_COHERENT_LOCAL, PROT_DEV_COHERENT_REMOTE, PROT_READ, PROT_WRITE, describe_snapshot,
)
from harness.vm.console import find_reports
from harness.vm.qemu import MachineConfig, memory_layout
from reference import check

from conftest import kernel_fixture

pytestmark = pytest.mark.vm

LAYOUT = memory_layout(MachineConfig())
LOCAL = PROT_DEV_COHERENT_LOCAL | PROT_WRITE
REMOTE = PROT_DEV_COHERENT_REMOTE | PROT_WRITE
SYSTEM = PROT_WRITE  # a present, writable PTE of an ordinary page

# Pages 0-1 go to dmirror2; pages 2-3 stay in system memory.
MIGRATED = """\
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=5
p0 open d2 dmirror2
p0 open d3 dmirror3
p0 open d0 dmirror0
p0 migrate_to_dev d2 a[0:2]
"""


session = kernel_fixture("session")


def run(session, text):
    """Run MIGRATED + `text`; return the program and the results from migrate_to_dev on.
    The reference model (reference/coherent.py) checks every op and agrees."""
    program = parse_program(MIGRATED + text, "coherent")
    trace = session.run(program)
    assert trace.ending is Ending.COMPLETED, trace.console
    verdict = check(program, trace)
    assert verdict.ok and verdict.checked == len(program.ops), str(verdict)
    migrate = len(parse_program(MIGRATED, "coherent").ops) - 1
    return program, trace.results[migrate:]


def codes(result) -> list[str]:
    return [describe_snapshot(code) for code in result.snapshot]


def content(program, page: int, seed: int = 5) -> tuple[int, int]:
    """(crc, first word) of page `page` of region a written with `seed`."""
    return digest(Content(seed, program.regions["a"].address // 4096 + page))


def test_the_guest_has_both_coherent_devices_and_a_quiet_boot(session):
    assert {0, 1, 2, 3} <= session.hello.devices
    boot_console = session.machine.console().split("hmmfuzz: program", 1)[0]
    assert find_reports(boot_console) == []


def test_migrate_to_dev_on_device_2_puts_the_pages_in_its_chunk_as_coherent_pages(session):
    program, (migrate, snap2, snap3, snap0, pagemap) = run(session, """\
p0 snapshot d2 a[0:4]
p0 snapshot d3 a[0:4]
p0 snapshot d0 a[0:4]
p0 pagemap a[0:4]
""")
    # dmirror_migrate_to_device -> dmirror_do_read returns the migrated bytes, one per page.
    assert migrate.errno == 0 and migrate.cpages == 2
    assert [(p.crc, p.first_word) for p in migrate.pages] == [content(program, 0),
                                                             content(program, 1)]
    # dmirror_mkentry: is_device_coherent_page(); LOCAL if the page's pgmap owner is this
    # dmirror's device, REMOTE for any other device (a private one too). The PTE is present
    # and writable: remove_migration_pte() restored a writable migration entry.
    assert list(snap2.snapshot) == [LOCAL, LOCAL, SYSTEM, SYSTEM], codes(snap2)
    assert list(snap3.snapshot) == [REMOTE, REMOTE, SYSTEM, SYSTEM], codes(snap3)
    assert list(snap0.snapshot) == [REMOTE, REMOTE, SYSTEM, SYSTEM], codes(snap0)
    # The PTE maps the device page itself: its PFN lies in dmirror2's reserved chunk.
    chunk2 = LAYOUT.coherent_pfns(2)
    assert [entry.present for entry in pagemap.pagemap] == [True] * 4
    assert [entry.pfn in chunk2 for entry in pagemap.pagemap] == [True, True, False, False]


def test_the_cpu_reads_and_writes_a_coherent_page_in_place(session):
    program, (_, before, read, after_read, write, after_write, dev_read) = run(session, """\
p0 pagemap a[0:2]
p0 read a[0:2]
p0 pagemap a[0:2]
p0 write a[0:1] seed=6
p0 pagemap a[0:2]
p0 dev_read d2 a[0:2]
""")
    # A present PTE: no fault, so no dmirror_devmem_fault and no migration back to system
    # memory (that only happens for device-private swap entries, do_swap_page).
    assert [(p.crc, p.first_word) for p in read.pages] == [content(program, 0),
                                                          content(program, 1)]
    pfns = [entry.pfn for entry in before.pagemap]
    assert [entry.pfn for entry in after_read.pagemap] == pfns
    assert [entry.pfn for entry in after_write.pagemap] == pfns
    assert all(pfn in LAYOUT.coherent_pfns(2) for pfn in pfns)
    # The device sees the CPU's write: both access the same memory (BACKING_PAGE of a
    # coherent page is the page itself).
    assert write.pages[0].signal == 0
    assert [(p.crc, p.first_word) for p in dev_read.pages] == [content(program, 0, seed=6),
                                                              content(program, 1)]


def test_only_the_owning_device_migrates_a_coherent_page(session):
    program, (_, to_dev0, to_sys0, to_sys2, snap2, pagemap, read) = run(session, """\
p0 migrate_to_dev d0 a[1:2]
p0 migrate_to_sys d0 a[0:2]
p0 migrate_to_sys d2 a[0:1]
p0 snapshot d2 a[0:2]
p0 pagemap a[0:2]
p0 read a[0:2]
""")
    # migrate_vma_collect_pmd skips a coherent page unless the caller selects
    # MIGRATE_VMA_SELECT_DEVICE_COHERENT with the page's own pgmap owner: dmirror0 migrates
    # nothing, and its dmirror_do_read then finds no mirror entry for the page: ENOENT.
    assert to_dev0.errno == 2
    # dmirror0 selects MIGRATE_VMA_SELECT_DEVICE_PRIVATE only (dmirror_select_device).
    assert to_sys0.errno == 0 and to_sys0.cpages == 0
    assert to_sys2.errno == 0 and to_sys2.cpages == 1
    assert list(snap2.snapshot) == [SYSTEM, LOCAL], codes(snap2)
    chunk2 = LAYOUT.coherent_pfns(2)
    assert [entry.pfn in chunk2 for entry in pagemap.pagemap] == [False, True]
    assert [(p.crc, p.first_word) for p in read.pages] == [content(program, 0),
                                                          content(program, 1)]


def test_closing_a_coherent_device_fd_evicts_its_pages_to_system_memory(session):
    program, (_, close, snap3, pagemap, read) = run(session, """\
p0 close d2
p0 snapshot d3 a[0:2]
p0 pagemap a[0:2]
p0 read a[0:2]
""")
    # dmirror_fops_release -> dmirror_device_evict_chunk: migrate_device_range() over every
    # chunk of the device, copying each page in use to a new system page.
    assert close.errno == 0
    assert list(snap3.snapshot) == [SYSTEM, SYSTEM], codes(snap3)
    assert not any(entry.pfn in LAYOUT.coherent_pfns(2) or entry.pfn in LAYOUT.coherent_pfns(3)
                   for entry in pagemap.pagemap)
    assert [(p.crc, p.first_word) for p in read.pages] == [content(program, 0),
                                                          content(program, 1)]


def test_ksm_and_compaction_leave_coherent_pages_where_they_are(session):
    program, (_, before, _, _, after_merge, _, after_compact, read) = run(session, """\
p0 pagemap a[0:4]
p0 madvise a[0:4] mergeable
p0 ksm_merge
p0 pagemap a[0:4]
p0 compact
p0 pagemap a[0:4]
p0 read a[0:4]
""")
    # ksmd skips zone-device folios (ksm_next_page_pmd_entry); compaction never sees
    # ZONE_DEVICE (no present pages, not on the LRU): the coherent PFNs stay.
    coherent = [entry.pfn for entry in before.pagemap[:2]]
    assert [entry.pfn for entry in after_merge.pagemap[:2]] == coherent
    assert [entry.pfn for entry in after_compact.pagemap[:2]] == coherent
    assert all(pfn in LAYOUT.coherent_pfns(2) for pfn in coherent)
    # kpagecount/kpageflags: pfn_to_online_page() is NULL at a ZONE_DEVICE PFN; 7.2's
    # kpage_read writes 0 then, 6.x kpageflags_read stable_page_flags(NULL): KPF_NOPAGE
    nothing = (0, KPF["NOPAGE"] if session.hello.release.startswith("6.") else 0)
    assert [(entry.count, entry.flags) for entry in before.pagemap[:2]] == [nothing] * 2
    assert [(p.crc, p.first_word) for p in read.pages] == [content(program, i)
                                                          for i in range(4)]


def test_a_uffd_write_protected_coherent_page_stays_in_device_memory_read_only(session):
    program, (_, register, protect, snap3, write, unprotect, write_again, snap3_after) = \
        run(session, """\
p0 uffd_register a[0:4]
p0 uffd_wp a[0:4] on
p0 snapshot d3 a[0:4]
p0 write a[0:1] seed=6
p0 uffd_wp a[0:1] off
p0 write a[0:1] seed=6
p0 snapshot d3 a[0:4]
""")
    READ_REMOTE = PROT_DEV_COHERENT_REMOTE | PROT_READ
    assert list(snap3.snapshot) == [READ_REMOTE, READ_REMOTE, PROT_READ, PROT_READ]
    # the write fault meets the uffd-wp bit: handle_userfault, no handler -> SIGBUS
    assert write.pages[0].signal == signal.SIGBUS
    assert write_again.pages[0].signal == 0
    assert list(snap3_after.snapshot) == [REMOTE, READ_REMOTE, PROT_READ, PROT_READ]


def test_move_pages_and_mbind_leave_coherent_pages_in_device_memory(session):
    program, (_, query, move, mbind, again, snap2) = run(session, """\
p0 move_pages a[0:4]
p0 move_pages a[0:4] 1
p0 mbind a[0:4] 0
p0 move_pages a[0:4]
p0 snapshot d2 a[0:4]
""")
    # do_pages_stat_array / __add_folio_for_migration: folio_is_zone_device -> -ENOENT;
    # queue_folios_pte_range skips it, and mbind reports nothing
    ENOENT = -2
    assert list(query.node_status) == [ENOENT, ENOENT, 0, 0]
    assert list(move.node_status) == [ENOENT, ENOENT, 1, 1]
    assert mbind.errno == 0
    assert list(again.node_status) == [ENOENT, ENOENT, 0, 0]
    assert list(snap2.snapshot) == [LOCAL, LOCAL, SYSTEM, SYSTEM], codes(snap2)


def test_a_coherent_page_behind_an_exclusive_entry_is_evicted_read_only_on_7_2(session):
    program = parse_program(MIGRATED + """\
p0 exclusive d3 a[0:1]
p0 close d2
p0 snapshot d3 a[0:4]
p0 read a[0:4]
""", "coherent")
    trace = session.run(program)
    assert trace.ending is Ending.COMPLETED, trace.console
    verdict = check(program, trace)
    close = len(program.ops) - 3
    if session.hello.release.startswith("6."):
        # 6.x cannot evict a coherent page behind a device-exclusive entry
        # (docs/findings.md #21): the model stops there
        assert verdict.ok and verdict.unmodelled_from == close, str(verdict)
        return
    assert verdict.ok and verdict.checked == len(program.ops), str(verdict)
    # try_to_migrate_one: a readable (exclusive) migration entry for a device-exclusive one
    assert list(trace.results[close + 1].snapshot) == [PROT_READ, SYSTEM, SYSTEM, SYSTEM]
