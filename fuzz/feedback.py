"""What the kernel did, as coverage features: the fuzzer's second signal besides the model's
own code paths.

The model's branches saturate early (it is small next to the kernel); what the kernel
reported keeps varying: which errno an op met after which other op, whether a device op
moved every page, some or none, which SNAPSHOT codes and fault signals appeared, which
pagemap bits a page showed. Each such feature of a run becomes a libFuzzer coverage counter
(syzkaller's "signal", here fed through Atheris's counters), so a program that makes the
kernel answer in a new way joins the corpus even when the model took no new path.
"""

from __future__ import annotations

import zlib
from typing import Iterator

from harness.prog import OpResult, Program, Trace
from harness.prog.ops import Op


def _bucket(value: int | None, npages: int) -> str:
    if value is None:
        return "none"
    if value == 0:
        return "zero"
    return "all" if value == npages else "some"


def _op_features(op: Op, result: OpResult) -> Iterator[tuple]:
    kind = op.keyword
    npages = op.range.npages if hasattr(op, "range") else 0
    yield (kind, "errno", result.errno)
    if result.cpages is not None:
        yield (kind, "cpages", _bucket(result.cpages, npages))
        yield (kind, "faults", _bucket(result.faults, npages))
    for code in set(result.snapshot or b""):
        yield (kind, "snapshot", code)
    for signal in {page.signal for page in result.pages}:
        yield (kind, "signal", signal)
    for entry in result.pagemap or ():
        yield (kind, "pagemap", entry.entry >> 55)  # the flag bits, not the PFN
        if entry.flags is not None:
            yield (kind, "kpageflags", entry.flags)


def features(program: Program, trace: Trace) -> set[tuple]:
    """The run's features: each op's outcome alone and after the op before it."""
    found: set[tuple] = {("ending", trace.ending.value)}
    previous: tuple = ("start",)
    for op, result in zip(program.ops, trace.results):
        own = set(_op_features(op, result))
        found |= own
        found |= {(previous, feature) for feature in own if feature[1] == "errno"}
        previous = (op.keyword, result.errno)
    return found


def slot(feature: tuple, slots: int) -> int:
    """A stable counter index for a feature (crc32: the same across workers and runs)."""
    return zlib.crc32(repr(feature).encode()) % slots
