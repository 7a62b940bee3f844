"""The kernel side on the real kernel: the guest boots, the runner executes programs in
the right processes, and the session survives a guest that dies mid-program."""

from __future__ import annotations

import threading

import pytest

from harness.prog import Ending, digest, Content, parse_program
from harness.prog.device import PROT_READ, PROT_WRITE, PROT_ZERO
from harness.vm.console import Kind, find_reports

pytestmark = pytest.mark.vm


def run(session, text):
    program = parse_program(text, "test")
    return program, session.run(program)


def test_the_guest_reports_its_kernel_and_both_private_devices(kernel_session, test_kernel):
    hello = kernel_session.hello
    assert hello.machine == "x86_64"
    assert {0, 1} <= hello.devices
    if test_kernel.version:
        assert hello.release.startswith(test_kernel.version)


def test_cpu_writes_reach_the_device_and_a_prot_none_page_faults(kernel_session):
    program, trace = run(kernel_session, """\
region a pages=4
p0 map a[0:4]
p0 write a[0:2] seed=7
p0 open d0 dmirror0
p0 dev_read d0 a[0:4]
p0 snapshot d0 a[0:4]
p0 mprotect a[3:4] none
p0 read a[2:4]
""")
    assert trace.ending is Ending.COMPLETED
    dev_read, snapshot, read = trace.results[3], trace.results[4], trace.results[6]
    base_vpn = program.address(program.ops[0].range) >> 12
    assert [(p.crc, p.first_word) for p in dev_read.pages[:2]] == [
        digest(Content(7, base_vpn)), digest(Content(7, base_vpn + 1))]
    assert dev_read.pages[2].first_word == 0 and dev_read.cpages == 4
    assert list(snapshot.snapshot) == [PROT_WRITE, PROT_WRITE, PROT_ZERO | PROT_READ,
                                       PROT_ZERO | PROT_READ]
    assert read.pages[0].signal == 0 and read.pages[1].signal == 11  # SIGSEGV


def test_each_op_runs_in_the_process_that_names_it(kernel_session):
    _, trace = run(kernel_session, """\
region a pages=1
p0 map a[0:1]
p0 write a[0:1] seed=1
p0 fork p1
p1 write a[0:1] seed=2
p0 read a[0:1]
p1 read a[0:1]
""")
    parent, child = trace.results[4].pages[0], trace.results[5].pages[0]
    assert parent.first_word >> 48 == 1 and child.first_word >> 48 == 2


def test_a_guest_that_dies_mid_program_is_reported_and_replaced(kernel_session):
    long_program = "region a pages=512\np0 map a[0:512]\n" + "p0 read a[0:512]\n" * 200
    victim = kernel_session.machine
    threading.Timer(1.0, victim.process.kill).start()
    _, trace = run(kernel_session, long_program)
    assert trace.ending is Ending.CRASHED
    assert len(trace.results) < 201
    restarts = kernel_session.restarts
    _, after = run(kernel_session, "region a pages=1\np0 map a[0:1]\np0 read a[0:1]\n")
    assert after.ending is Ending.COMPLETED and kernel_session.restarts == restarts + 1


def test_a_task_blocked_for_10_seconds_gets_a_hung_task_report(kernel_session):
    """The command line sets kernel.hung_task_timeout_secs=10 (harness/vm/qemu.py): khungtaskd
    checks every 10 s, so a task in D state is reported 10-20 s after it blocked, before the
    runner's own 20 s op timeout. LKDTM's HUNG_TASK sleeps in TASK_UNINTERRUPTIBLE forever
    (the writer never returns, so the exchange ends as a hang and the guest is replaced)."""
    trace = kernel_session.provoke("HUNG_TASK", timeout=25)
    assert trace.ending is Ending.HUNG
    reports = find_reports(trace.console)
    assert [report.kind for report in reports] == [Kind.HUNG_TASK], trace.console
    assert "blocked for more than 10 seconds" in reports[0].text
