"""Compaction (`compact`) as the model states it: every present folio may move (a new PFN,
the mirror's entry and the next page's gone), nothing else changes; checked on 7.2.13 and
6.1.192 by tests/test_vm_model_compaction.py."""

from test_model_support import dev, err, ok, patterns, program, snap, trace, wrote, zeros

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check
from reference.expect import EPERM
from reference.uapi import PROT_NONE as NONE, PROT_READ as READ, PROT_WRITE as WRITE

SD, EXCL, PRESENT = 1 << 55, 1 << 56, 1 << 63
ANON, ANON_EXCL = 1 << 12, 1 << 34

PROG = """
    region a pages=4
    p0 map a[0:4]
    p0 write a[0:4] seed=1
    p0 open d0 dmirror0
    p0 dev_read d0 a[0:4]
    p0 pagemap a[0:1]
    p0 compact
    p0 pagemap a[0:1]
    p0 dev_read d0 a[0:4]
"""


def mine(pfn):
    return OpResult(pagemap=(PagemapEntry(PRESENT | SD | EXCL | pfn, 1, ANON | ANON_EXCL),))


def test_a_page_may_move_or_stay_and_the_mirror_may_lose_it():
    prog = program(PROG)
    data = patterns(prog, 1, "a", 0, 4)
    for after, faults in ((0x100, 0), (0x200, 1), (0x100, 1)):
        verdict = check(prog, trace(ok(), wrote(4), ok(), dev(4, 1, data), mine(0x100), ok(),
                                    mine(after), dev(4, faults, data)))
        assert verdict.ok, (after, faults, str(verdict))


def test_compaction_keeps_the_content():
    prog = program(PROG)
    data = patterns(prog, 1, "a", 0, 4)
    verdict = check(prog, trace(ok(), wrote(4), ok(), dev(4, 1, data), mine(0x100), ok(),
                                mine(0x200), dev(4, 1, data[:3] + data[:1])))
    assert [d.field for d in verdict.divergences] == ["pages[3]"]


EXCLUSIVE_THEN_COMPACT = """
    region a pages=2
    p0 map a[0:2]
    p0 write a[0:2] seed=1
    p0 open d0 dmirror0
    p0 exclusive d0 a[0:1]
    p0 compact
    p0 check_exclusive d0 a[0:1]
    p0 snapshot d0 a[0:1]
"""


def _exclusive_then_compact(release, after_check, after_snapshot):
    prog = program(EXCLUSIVE_THEN_COMPACT)
    return check(prog, trace(ok(), wrote(2), ok(), dev(1, 0, patterns(prog, 1, "a", 0, 1)), ok(),
                             after_check, after_snapshot, release=release))


TAKEN = (dev(0, 0), snap(READ))               # a present read-only PTE, no longer atomic
STAYED = (err(EPERM), snap(NONE))             # still device-exclusive


def test_on_72_compaction_may_take_a_device_exclusive_entry_and_map_the_page_read_only():
    for outcome in (TAKEN, STAYED):
        verdict = _exclusive_then_compact("7.2.13", *outcome)
        assert verdict.ok and verdict.unmodelled_op is None, str(verdict)
    # taken, the page comes back read-only (a readable migration entry), never writable
    verdict = _exclusive_then_compact("7.2.13", dev(0, 0), snap(WRITE))
    assert [d.field for d in verdict.divergences] == ["snapshot[0]"]


def test_before_72_compaction_never_takes_a_device_exclusive_entry():
    # the entry dropped the rmap but holds the page: folio_migrate_mapping says -EAGAIN
    for release in ("6.12.117", "6.1.192"):
        assert _exclusive_then_compact(release, *STAYED).ok
        verdict = _exclusive_then_compact(release, *TAKEN)
        assert not verdict.ok and verdict.divergences[0].field == "errno"


def test_compaction_with_many_device_exclusive_entries_is_refused_on_72():
    prog = program("""
        region a pages=4
        p0 map a[0:4]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:4]
        p0 compact
    """)
    verdict = check(prog, trace(ok(), ok(), dev(4, 0, zeros(4)), ok()))
    assert verdict.ok
    assert verdict.unmodelled_op == "compact with more than 3 device-exclusive entries"
