"""The crash oracle on the live kernel: LKDTM makes the booted guest WARN and BUG, the parser
titles what the console shows, and the session comes back to run programs after the BUG."""

from __future__ import annotations

import pytest

from harness.prog import Ending, parse_program
from harness.vm.console import Kind, find_reports
from harness.vm.session import KernelSession

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def session(test_kernel, tmp_path_factory):
    """A guest of its own: the BUG below kills it (PANIC_ON_OOPS)."""
    with KernelSession(test_kernel, tmp_path_factory.mktemp("console-vm")) as own:
        yield own


def test_lkdtm_warning_and_bug_are_titled_and_the_session_recovers(session):
    warning = session.provoke("WARNING")
    assert warning.ending is Ending.COMPLETED              # a WARNING does not kill the guest,
    assert not session.machine.alive()                     # but the next request gets a fresh one
    [report] = find_reports(warning.console)
    assert (report.kind, report.title) == (Kind.WARNING, "WARNING in lkdtm_WARNING")
    assert not report.corrupted and not report.fatal

    bug = session.provoke("BUG")
    assert bug.ending is Ending.CRASHED
    [report] = find_reports(bug.console)                   # the panic is part of the Oops
    assert (report.kind, report.title) == (Kind.BUG, "kernel BUG in lkdtm_BUG")
    assert report.fatal and not report.corrupted, report.corrupted_reason
    assert "Kernel panic - not syncing: Fatal exception" in report.text

    program = parse_program("region a pages=2\np0 map a[0:2]\np0 write a[0:2] seed=3\n"
                            "p0 read a[0:2]\n", "after-bug")
    after = session.run(program)
    assert session.restarts == 2  # after the WARNING (a tainted kernel) and after the BUG
    assert after.ending is Ending.COMPLETED and len(after.results) == 3
    assert find_reports(after.console) == []
