"""Verdicts on whole runs: a kernel crash outranks divergences, its evidence is saved first,
and the per-op lines say which op was running."""

from __future__ import annotations

from fuzz.cli import save_crash
from fuzz.judge import Status, judge
from harness.prog import Ending, OpResult, Trace, parse_program
from harness.prog.observation import KPF, PM_PRESENT, PM_SWAP, Page, PagemapEntry

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


def test_the_lines_can_show_what_the_kernel_reported_even_for_unchecked_ops():
    # (collapse of a file mapping is refused: collapse_file is not followed)
    program = parse_program("region a pages=8\np0 map a[0:8] file\n"
                            "p0 madvise a[0:8] collapse\np0 pagemap a[0:8]\n", "seen.txt")
    swapped = PagemapEntry(PM_SWAP | 30)
    present = PagemapEntry(PM_PRESENT | 0x1234, 1, KPF["ANON"])
    trace = Trace("7.2.13", (OpResult(), OpResult(errno=22),
                             OpResult(pagemap=(swapped,) * 3 + (present,) * 5)))
    lines = judge(program, trace).lines(observations=True)
    assert lines[3].strip() == "kernel: errno=EINVAL"
    assert lines[4].endswith("unchecked")
    assert lines[5].strip() == ("kernel: errno=0 pagemap=[swapped x3, present count=1 "
                                "flags=ANON x5]")
    assert not any("kernel:" in line for line in judge(program, trace).lines())


def test_long_per_page_observations_are_cut_to_their_first_and_last_runs():
    pages = tuple(Page(signal=0 if n % 2 else 11) for n in range(40))   # ok, SIGSEGV, ...
    shown = OpResult(pages=pages).describe()
    assert shown == "errno=0 pages=[SIGSEGV, ok, SIGSEGV, ok, ... (40 in all), SIGSEGV, ok]"
