"""Findings on disk: a campaign records a failure before it reproduces it, so a run that
stops meanwhile loses nothing; the reproduction then confirms it (or not)."""

from __future__ import annotations

import json

from fuzz.findings import FindingStore
from fuzz.judge import judge
from fuzz.report import write_report
from harness.prog import Ending, OpResult, Trace, parse_program

PROGRAM = parse_program("region a pages=1\np0 map a[0:1]\np0 open d0 dmirror0\n", "p.txt")


def crashed_in_open():
    return judge(PROGRAM, Trace("7.2.13", (OpResult(),), Ending.CRASHED, console="..."))


def test_a_pending_finding_is_on_disk_unconfirmed_and_confirm_settles_it(tmp_path):
    store = FindingStore(tmp_path / "findings")
    recorded = store.record(crashed_in_open(), pending=True)
    assert recorded.new and recorded.signature == "crashed in open"
    assert (recorded.directory / "program.txt").read_text() == \
        "region a pages=1\np0 map a[0:1]\np0 open d0 dmirror0\n"
    meta = json.loads((recorded.directory / "finding.json").read_text())
    assert meta["confirmed"] is False and "reproduction" not in meta
    report = write_report(tmp_path).read_text()
    assert "not yet (the run stopped while it was reproduced)" in report

    store.confirm(recorded.signature, {"runs": 2, "reproduced": 1})
    meta = json.loads((recorded.directory / "finding.json").read_text())
    assert meta["confirmed"] is True and meta["reproduction"] == {"runs": 2, "reproduced": 1}
    assert not store.record(crashed_in_open(), pending=True).new   # a second hit only counts
    assert json.loads((recorded.directory / "finding.json").read_text())["hits"] == 2
