"""The verdict on one program run: the model's check of the kernel's trace, plus what the
kernel said on its console and how the run ended.

This is where the two rooms meet: the kernel side produced a Trace, the reference model
judges it, and the console oracle adds what the model cannot see.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import IntEnum

import reference
from harness.prog import (LEAK_THRESHOLD_PAGES, Ending, MemoryCheck, Program, Trace,
                          format_op)
from harness.vm.console import ConsoleReport, find_reports


class Status(IntEnum):
    """Exit statuses of `hmmfuzz run`, most severe last."""

    OK = 0
    DIVERGENCE = 1
    INPUT_ERROR = 2
    KERNEL_CRASH = 3
    INFRASTRUCTURE = 4


@dataclass(frozen=True)
class ProgramVerdict:
    program: Program
    trace: Trace
    model: reference.Verdict
    reports: tuple[ConsoleReport, ...] = ()
    died_signal: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def status(self) -> Status:
        if self.trace.ending in (Ending.CRASHED, Ending.HUNG) or self.reports:
            return Status.KERNEL_CRASH
        if self.model.divergences or self.trace.ending is Ending.DIED or self.leak:
            return Status.DIVERGENCE
        return Status.OK

    @property
    def leak(self) -> int | None:
        """Pages the program leaked, when the leak check says it did (see leak_verdict)."""
        return leak_verdict(self.trace.memory)

    @property
    def leak_signature(self) -> str | None:
        """The finding kind of a leak, for deduplication: all leaks are one kind."""
        return "leak: pages leaked" if self.leak else None

    @property
    def stopped_at(self) -> int | None:
        """Index of the op the run ended in, when it did not complete."""
        if self.trace.ending is Ending.COMPLETED:
            return None
        return len(self.trace.results)

    def lines(self, observations: bool = False) -> list[str]:
        """Per-op verdicts for a person: `file:line  op  ok`, or the divergences of that op;
        with `observations`, each op's line is followed by what the kernel reported."""
        width = max((len(format_op(op)) for op in self.program.ops), default=0)
        divergences = {}
        for divergence in self.model.divergences:
            divergences.setdefault(divergence.op_index, []).append(divergence)
        out = []
        for index, op in enumerate(self.program.ops):
            head = f"  {self.program.where(index)}  {format_op(op):<{width}}"
            if index == self.stopped_at:
                out.append(f"{head}  {self._ending_text()}")
                break
            if index >= len(self.trace.results):
                break
            out += self._op_lines(index, head, divergences.get(index))
            if observations:
                out.append(f"{' ' * len(head)}    kernel: {self.trace.results[index].describe()}")
        if self.stopped_at is not None and self.stopped_at >= len(self.program.ops):
            out.append(f"  after the last op: {self._ending_text()}")
        for report in self.reports:
            out.append(f"  kernel console: {report.title}")
        if self.leak:
            out.append(f"  after the program: LEAK pages leaked: {self.leak} (pages that left the "
                       f"allocator and came back neither free nor in any counter; more than "
                       f"{LEAK_THRESHOLD_PAGES} is never noise)")
        return out

    def _op_lines(self, index: int, head: str, found) -> list[str]:
        if self.model.unmodelled_from is not None and index >= self.model.unmodelled_from:
            # the model knows nothing from the first op it does not model on
            return [f"{head}  unchecked: {self.model.unmodelled}"
                    if index == self.model.unmodelled_from else f"{head}  unchecked"]
        if not found:
            return [f"{head}  ok"]
        out = []
        for n, divergence in enumerate(found):
            lead = head if n == 0 else " " * len(head)
            out.append(f"{lead}  DIVERGENCE {divergence.field}: observed {divergence.observed}, "
                       f"allowed only {' or '.join(divergence.allowed)}")
            if divergence.reason:
                out.append(f"{' ' * len(head)}    because {divergence.reason}")
        return out

    def _ending_text(self) -> str:
        ending = self.trace.ending
        if ending is Ending.DIED:
            name = signal.Signals(self.died_signal).name if self.died_signal else "unknown signal"
            return f"DIVERGENCE process died ({name}); the model expects it to run on"
        if ending is Ending.HUNG:
            return "KERNEL HANG: this op did not finish"
        return "KERNEL CRASH: the guest died during this op"


def judge(program: Program, trace: Trace, died_signal: int = 0) -> ProgramVerdict:
    return ProgramVerdict(
        program=program,
        trace=trace,
        model=reference.check(program, trace),
        reports=tuple(find_reports(trace.console)),
        died_signal=died_signal,
    )


# The leak check's method and calibration: harness.prog.observation, with the counters.


def leak_verdict(memory: MemoryCheck | None) -> int | None:
    """Pages leaked if the balance says the program leaked (above LEAK_THRESHOLD_PAGES);
    None when it did not, or when it could not be measured or told."""
    if memory is None:
        return None
    leaked = leaked_pages(memory)
    return leaked if leaked is not None and leaked > LEAK_THRESHOLD_PAGES else None


def leaked_pages(memory: MemoryCheck) -> int | None:
    return memory.leaked_pages()
