"""Archived runs are judged again by later models: a memory check recorded by an older
runner must not be misread as one of today's."""

from __future__ import annotations

import json

from fuzz.archive import ArchiveWriter, runs
from harness.prog import MemoryCheck, MemoryCounters, OpResult, Trace, parse_program

from conftest import REPO

RECORD = json.loads((REPO / "tests/data/leak_calibration_7.2.json").read_text())["records"][0]
BEFORE, AFTER = MemoryCounters(**RECORD["before"]), MemoryCounters(**RECORD["after"])
PROGRAM = parse_program("region a pages=1\np0 map a[0:1]\n", "archived.txt")


def archived(tmp_path, memory: MemoryCheck) -> MemoryCheck | None:
    path = tmp_path / "runs.pkl"
    writer = ArchiveWriter(path)
    writer.add(PROGRAM, Trace("7.2.13", (OpResult(),), memory=memory), 0)
    writer.close()
    (run,) = runs(path)
    return run.trace.memory


def test_a_check_with_one_reading_after_the_program_is_kept(tmp_path):
    memory = MemoryCheck(BEFORE, AFTER)  # the first reading balanced: no second one taken
    assert archived(tmp_path, memory) == memory


def test_a_check_recorded_before_the_second_reading_existed_is_dropped(tmp_path):
    # An older runner took one reading and knew nothing of `again`; today's default (None,
    # "not asked for") would make its transient allocations look like leaks.
    old = MemoryCheck(BEFORE, AFTER)
    del vars(old)["again"]
    assert archived(tmp_path, old) is None
