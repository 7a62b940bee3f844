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
from harness.prog import Ending, MemoryCheck, MemoryCounters, Program, Trace, format_op
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

    def lines(self) -> list[str]:
        """Per-op verdicts for a person: `file:line  op  ok`, or the divergences of that op."""
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
            if self.model.unmodelled_from is not None and index >= self.model.unmodelled_from:
                # the model knows nothing from the first op it does not model on
                out.append(f"{head}  unchecked: {self.model.unmodelled}"
                           if index == self.model.unmodelled_from else f"{head}  unchecked")
                continue
            found = divergences.get(index)
            if not found:
                out.append(f"{head}  ok")
                continue
            for n, divergence in enumerate(found):
                lead = head if n == 0 else " " * len(head)
                out.append(f"{lead}  DIVERGENCE {divergence.field}: observed {divergence.observed}, "
                           f"allowed only {' or '.join(divergence.allowed)}")
                if divergence.reason:
                    out.append(f"{' ' * len(head)}    because {divergence.reason}")
        if self.stopped_at is not None and self.stopped_at >= len(self.program.ops):
            out.append(f"  after the last op: {self._ending_text()}")
        for report in self.reports:
            out.append(f"  kernel console: {report.title}")
        if self.leak:
            out.append(f"  after the program: LEAK pages leaked: {self.leak} (pages that left the "
                       f"allocator and came back neither free nor in any counter; more than "
                       f"{LEAK_THRESHOLD_PAGES} is never noise)")
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


# The leak check. Method: the runner reads memory counters before each program (the last
# program's final reading) and twice after all its processes are gone, 20 ms apart (wire.h
# enum wire_memory_counter; each reading after drop_caches=1, which drains every CPU's LRU
# batches, and repeated until two readings 5 ms apart agree on free pages and slab);
# leaked_pages() balances them. Calibration on programs known to be clean
# (tests/leak_calibration.py: the corpus and random programs of both op sets, records in
# tests/data/leak_calibration_<kernel>.json) measured the noise of that balance:
#   7.2.13    212 programs (seed 31: 100 modelled + 100 all-op random)  -65 .. +58 pages
#   6.12.117  133 programs (seed 32: 60 + 60)                           -62 .. +54 pages
#   6.1.192   134 programs (seed 33: 60 + 60)                           -73 .. +32 pages,
#             20 of them inconclusive (a device chunk came or went; 6.1 has no memmap counter)
# With a single reading after the program, one run in ~200 read +284 (a transient
# allocation, back 20 ms later): hence the second reading. The threshold is more than 3.5
# times the worst balance measured, so a report is never noise; a leak must exceed it.
LEAK_THRESHOLD_PAGES = 256


def leak_verdict(memory: MemoryCheck | None) -> int | None:
    """Pages leaked if the balance says the program leaked (above LEAK_THRESHOLD_PAGES);
    None when it did not, or when it could not be measured or told."""
    if memory is None:
        return None
    leaked = leaked_pages(memory)
    return leaked if leaked is not None and leaked > LEAK_THRESHOLD_PAGES else None


def leaked_pages(memory: MemoryCheck) -> int | None:
    """Pages that left the page allocator during the program and did not come back, less
    what the kernel's own counters say it holds now and did not hold before: slab, page
    tables, vmalloc (kernel stacks among it), per-CPU areas, zram's compressed pages,
    anonymous and file pages, and the struct pages of hotplugged memory (6.8+'s
    nr_memmap_pages). Negative when more came back than left. Of the two readings after
    the program, the smaller balance counts: a leak is in both, a page the kernel held for
    a moment in one only.

    None when it cannot be told: the test device took or gave back a device memory chunk
    (HMM_DMIRROR_RELEASE frees them on 7.2, the next migration allocates one) on a kernel
    without nr_memmap_pages (6.1), where the chunk's struct pages are counted nowhere."""
    balances = [_balance(memory.before, after) for after in (memory.after, memory.again)]
    if None in balances:
        return None
    return min(balances)


def _balance(before: MemoryCounters, after: MemoryCounters) -> int | None:
    if after.device_chunks != before.device_chunks and (after.memmap is None
                                                        or before.memmap is None):
        return None
    gone = before.free_total - after.free_total
    held = ((after.slab - before.slab) + (after.pagetables - before.pagetables)
            + (after.vmalloc_kb - before.vmalloc_kb) // 4
            + (after.percpu_kb - before.percpu_kb) // 4
            + (after.zspages - before.zspages) + (after.anon - before.anon)
            + (after.file - before.file))
    if after.memmap is not None and before.memmap is not None:
        held += after.memmap - before.memmap
    return gone - held
