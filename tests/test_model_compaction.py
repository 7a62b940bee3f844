"""Compaction (`compact`) as the model states it: every present folio may move (a new PFN,
the mirror's entry and the next page's gone), nothing else changes; checked on 7.2.13 and
6.1.192 by tests/test_vm_model_compaction.py."""

from test_model_support import dev, ok, patterns, program, trace, wrote, zeros

from harness.prog import OpResult
from harness.prog.observation import PagemapEntry
from reference import check

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


def test_compaction_with_device_exclusive_entries_is_refused():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 open d0 dmirror0
        p0 exclusive d0 a[0:1]
        p0 compact
    """)
    verdict = check(prog, trace(ok(), ok(), dev(1, 0, zeros(1)), ok()))
    assert verdict.ok and verdict.unmodelled_op == "compact with device-exclusive entries"
