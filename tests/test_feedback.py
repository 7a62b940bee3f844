"""Kernel-reported features for guidance: two runs that the kernel answered differently
have different features, and the same answers give the same ones."""

from __future__ import annotations

from fuzz.feedback import features, slot
from harness.prog import Ending, OpResult, Page, Trace, parse_program

PROGRAM = parse_program("""
region a pages=2
p0 map a[0:2]
p0 open d0 dmirror0
p0 migrate_to_dev d0 a[0:2]
p0 snapshot d0 a[0:2]
p0 read a[0:2]
""")


def run(cpages: int, snapshot: bytes, signal: int = 0) -> Trace:
    return Trace("7.2.13", (
        OpResult(), OpResult(),
        OpResult(cpages=cpages, faults=0, pages=(Page(crc=1, first_word=0),) * 2),
        OpResult(cpages=0, faults=0, snapshot=snapshot),
        OpResult(pages=(Page(signal=signal),) * 2),
    ), Ending.COMPLETED)


def test_the_same_answers_give_the_same_features():
    assert features(PROGRAM, run(2, b"\x20\x20")) == features(PROGRAM, run(2, b"\x20\x20"))


def test_migrating_some_pages_instead_of_all_is_a_new_feature():
    assert ("migrate_to_dev", "cpages", "some") in features(PROGRAM, run(1, b"\x20\x20")) - \
        features(PROGRAM, run(2, b"\x20\x20"))


def test_a_new_snapshot_code_or_fault_signal_is_a_new_feature():
    base = features(PROGRAM, run(2, b"\x20\x20"))
    assert ("snapshot", "snapshot", 0x10) in features(PROGRAM, run(2, b"\x10\x20")) - base
    assert ("read", "signal", 11) in features(PROGRAM, run(2, b"\x20\x20", signal=11)) - base


def test_an_errno_counts_with_the_op_before_it():
    failed = Trace("7.2.13", run(2, b"").results[:2] + (OpResult(errno=16),), Ending.COMPLETED)
    assert (("open", 0), ("migrate_to_dev", "errno", 16)) in features(PROGRAM, failed)


def test_feature_slots_are_stable_and_in_range():
    feature = ("dev_read", "errno", 14)
    assert slot(feature, 1 << 14) == slot(("dev_read", "errno", 14), 1 << 14) < 1 << 14
