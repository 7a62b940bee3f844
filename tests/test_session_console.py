"""A crash that began before the request: the serial console lags the runner's channel, so
a program can report DONE while its oops is still printing, and the guest dies under the
next program. The session tells the two apart by where the fatal report begins."""

from __future__ import annotations

from harness.vm.session import KernelSession

from conftest import REPO

OOPS = (REPO / "tests" / "data" / "consoles" / "7.2" / "ACCESS_NULL.log").read_text()


class Console:
    """A machine as far as console slicing goes: the console so far, read from an offset."""

    def __init__(self, text: str):
        self.text = text

    def console(self, since: int = 0) -> str:
        return self.text[since:]


def session_after(previous_start: int | None) -> KernelSession:
    session = KernelSession.__new__(KernelSession)
    session._previous_start = previous_start
    return session


def test_an_oops_that_began_under_the_previous_program_is_not_this_ones():
    sent = OOPS.index("RIP:")  # the next program was sent while the oops was printing
    assert session_after(previous_start=0)._crash_began_before(Console(OOPS), sent)


def test_an_oops_that_begins_under_this_program_is_its_own():
    sent = OOPS.index("BUG:") - 20
    assert not session_after(previous_start=0)._crash_began_before(Console(OOPS), sent)


def test_the_first_program_of_a_guest_has_nothing_before_it():
    sent = OOPS.index("RIP:")
    assert not session_after(previous_start=None)._crash_began_before(Console(OOPS), sent)


class Stoppable(Console):
    console_path = "console.log"
    stopped = False

    def stop(self):
        self.stopped = True


def test_a_guest_that_cannot_fork_after_other_programs_is_restarted_and_the_program_rerun():
    session = session_after(previous_start=0)
    session.log = lambda message: None
    machine = Stoppable("")
    assert session._broken_guest(machine, 12) is True and machine.stopped


def test_a_fresh_guest_that_cannot_fork_is_an_infrastructure_failure():
    import pytest

    from harness.vm.session import RunnerFailure

    with pytest.raises(RunnerFailure, match="Cannot allocate memory"):
        session_after(previous_start=None)._broken_guest(Stoppable(""), 12)
