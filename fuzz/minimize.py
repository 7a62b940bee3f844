"""Reducing a failing program while the same failure reproduces.

Delta debugging (Zeller's ddmin) over the ops, then simplification of what is left: fewer
pages per range, seed 1, unused regions dropped. Every candidate is re-validated through
the text form, so an op whose fd or process disappeared with a removed op is never run.
`reproduces` is the expensive part (one VM run); the result records how many it took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from harness.prog import Located, PageRange, ParseError, Program, Region, format_program, parse_program
from harness.prog.ops import Op

from .judge import ProgramVerdict


def signature(verdict: ProgramVerdict) -> str | None:
    """What makes two failures the same failure: for a crash, the console title; for a
    divergence, the op kind, the field kind and what the model allowed; for a leak, that
    it leaked (the leak check's balance varies). None when ok."""
    if verdict.reports:
        return f"crash: {verdict.reports[0].title}"
    if verdict.trace.ending.value in ("crashed", "hung", "died"):
        # The run can end after the last op reported (e.g. processes that cannot be reaped).
        stopped = verdict.stopped_at
        where = (verdict.program.ops[stopped].keyword if stopped < len(verdict.program.ops)
                 else "program teardown")
        what = "process died" if verdict.trace.ending.value == "died" else verdict.trace.ending.value
        return f"{what} in {where}"
    if not verdict.model.divergences:
        return verdict.leak_signature  # None when the program is clean
    first = verdict.model.divergences[0]
    op = verdict.program.ops[first.op_index]
    field = re.sub(r"\[\d+\]", "[]", first.field)
    # the model numbers folios as it meets them: "folio #6" in one program is "#15" in another
    allowed = re.sub(r"#\d+", "#", " or ".join(first.allowed))
    return f"divergence: {op.keyword} {field} allowed {allowed}"


@dataclass(frozen=True)
class Minimized:
    program: Program
    executions: int
    ops_before: int


def _valid(program: Program) -> Program | None:
    try:
        return parse_program(format_program(program), program.source)
    except ParseError:
        return None


class _Search:
    def __init__(self, reproduces: Callable[[Program], bool], source: str, regions):
        self.reproduces, self.source, self.regions = reproduces, source, regions
        self.executions = 0
        self.seen: dict[str, bool] = {}

    def program(self, ops) -> Program:
        used = {op.range.region for op in ops if hasattr(op, "range")}
        # Unused regions go; the rest keep their slots (and so their addresses).
        regions = tuple(r for r in self.regions if r.name in used)
        return Program(regions + tuple(Located(op) for op in ops), source=self.source)

    def test(self, ops) -> bool:
        candidate = _valid(self.program(ops))
        if candidate is None:
            return False
        key = format_program(candidate)
        if key not in self.seen:
            self.executions += 1
            self.seen[key] = self.reproduces(candidate)
        return self.seen[key]


def ddmin(ops: list[Op], test: Callable[[list[Op]], bool]) -> list[Op]:
    granularity = 2
    while len(ops) >= 2:
        size = max(1, len(ops) // granularity)
        chunks = [ops[i:i + size] for i in range(0, len(ops), size)]
        reduced = False
        for index in range(len(chunks)):
            complement = [op for j, chunk in enumerate(chunks) if j != index for op in chunk]
            if test(complement):
                ops, granularity, reduced = complement, max(granularity - 1, 2), True
                break
        if not reduced:
            if granularity >= len(ops):
                break
            granularity = min(len(ops), granularity * 2)
    return ops


def _simpler_ops(op: Op):
    """Simpler variants of one op, simplest first."""
    if hasattr(op, "seed") and op.seed != 1:
        yield replace(op, seed=1)
    if hasattr(op, "range") and op.range.npages > 1:
        r = op.range
        for start, end in ((r.start, r.start + 1), (r.end - 1, r.end),
                           (r.start, r.start + r.npages // 2), (r.start + r.npages // 2, r.end)):
            yield replace(op, range=PageRange(r.region, start, end))


def simplify(ops: list[Op], test: Callable[[list[Op]], bool]) -> list[Op]:
    changed = True
    while changed:
        changed = False
        for index, op in enumerate(ops):
            for simpler in _simpler_ops(op):
                candidate = ops[:index] + [simpler] + ops[index + 1:]
                if test(candidate):
                    ops, changed = candidate, True
                    break
    return ops


def minimize(program: Program, reproduces: Callable[[Program], bool]) -> Minimized:
    regions = tuple(s for s in program.statements if isinstance(s, Region))
    search = _Search(reproduces, program.source, regions)
    ops = ddmin(list(program.ops), search.test)
    ops = simplify(ops, search.test)
    return Minimized(_valid(search.program(ops)), search.executions, len(program.ops))
