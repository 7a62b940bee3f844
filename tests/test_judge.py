"""Verdicts on whole runs: a kernel crash outranks divergences, its evidence is saved first,
and the per-op lines say which op was running."""

from __future__ import annotations

from fuzz.cli import save_crash
from fuzz.judge import Status, judge
from harness.prog import Ending, OpResult, Trace, parse_program

PROGRAM = parse_program("region a pages=1\np0 map a[0:1]\np0 read a[0:1]\n", "crashy.txt")
CONSOLE = """[   12.1] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   12.1] RIP: 0010:lkdtm_EXCEPTION+0x1a/0x23
[   12.1] Kernel panic - not syncing: Fatal exception
"""


def test_a_guest_that_died_mid_program_is_a_kernel_crash_at_the_running_op(tmp_path):
    trace = Trace("7.2.13", (OpResult(),), Ending.CRASHED, console=CONSOLE)
    verdict = judge(PROGRAM, trace)
    assert verdict.status is Status.KERNEL_CRASH
    assert verdict.stopped_at == 1
    assert any("KERNEL CRASH" in line and "crashy.txt:3" in line for line in verdict.lines())
    saved = save_crash(verdict, tmp_path, serial=7)
    assert (saved / "program.txt").read_text() == "region a pages=1\np0 map a[0:1]\np0 read a[0:1]\n"
    assert "Kernel panic" in (saved / "console.log").read_text()
    assert "KERNEL CRASH" in (saved / "report.txt").read_text()


def test_a_hang_is_reported_like_a_crash():
    verdict = judge(PROGRAM, Trace("7.2.13", (OpResult(),), Ending.HUNG))
    assert verdict.status is Status.KERNEL_CRASH
    assert any("KERNEL HANG" in line for line in verdict.lines())


def test_a_wrong_observation_is_a_divergence_naming_field_observed_and_allowed():
    wrong = OpResult(pages=(OpResult().pages or ()))  # the read reported no page at all
    verdict = judge(PROGRAM, Trace("7.2.13", (OpResult(), wrong)))
    assert verdict.status is Status.DIVERGENCE
    text = "\n".join(verdict.lines())
    assert "crashy.txt:3" in text and "DIVERGENCE" in text and "allowed only" in text


def test_a_hang_after_every_op_reported_is_titled_by_the_teardown():
    from fuzz.minimize import signature

    trace = Trace("7.2.13", (OpResult(), OpResult(pages=())), Ending.HUNG)
    verdict = judge(PROGRAM, trace)
    assert signature(verdict) == "hung in program teardown"
    assert any("after the last op: KERNEL HANG" in line for line in verdict.lines())
