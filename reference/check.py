"""Checking a kernel trace against the model, SibylFS style.

The model keeps a set of possible states (almost always one). For each op it computes every
allowed outcome from every state, keeps the states whose outcome matches the observation
exactly, and moves on. When nothing matches it records one Divergence per differing field of
the closest allowed outcome ("observed X, allowed only Y", with the model's reason) and
continues from the state(s) that follow that outcome, so later independent bugs are still
reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.prog import Op, OpResult, Program, Trace, errno_name, format_op

from .expect import Expect
from .ksm import compare as compare_ksm
from .pagemap import compare as compare_pagemap
from .places import Places
from .profile import profile_for
from .smaps import compare as compare_smaps
from .semantics import Unmodelled, step
from .state import World
from .uapi import prot_name

MAX_STATES = 32          # more possible states than this and the model keeps the first ones
MAX_PER_FIELD = 16       # per-page divergences reported for one op's pages/snapshot field


@dataclass(frozen=True)
class Divergence:
    op_index: int
    where: str           # program.where(i): file:line
    op: str              # format_op
    field: str           # "errno", "cpages", "faults", "pages[3]", "snapshot[5]", ...
    allowed: tuple[str, ...]
    observed: str
    reason: str

    def __str__(self) -> str:
        allowed = " or ".join(self.allowed)
        return (f"{self.where}: {self.op}: {self.field}: observed {self.observed}, "
                f"allowed only {allowed} ({self.reason})")


@dataclass(frozen=True)
class Verdict:
    divergences: tuple[Divergence, ...]
    checked: int
    profile: str
    notes: tuple[str, ...] = ()
    # The index of the first op the model does not model, and that op as the model names it
    # ("madvise pageout", "map shared"). The model cannot know the state after such an op,
    # so it checks nothing from there on: `checked` stops at this index.
    unmodelled_from: int | None = None
    unmodelled_op: str | None = None

    @property
    def ok(self) -> bool:
        """No divergence in the ops that were checked (an unmodelled op is not one)."""
        return not self.divergences

    @property
    def unmodelled(self) -> str | None:
        """`madvise pageout is not modelled`, or None when every op was modelled."""
        if self.unmodelled_op is None:
            return None
        return f"{self.unmodelled_op} is not modelled"

    def at(self, op_index: int) -> tuple[Divergence, ...]:
        return tuple(d for d in self.divergences if d.op_index == op_index)

    def describe(self, op_index: int) -> str:
        """`ok`, `unchecked`, or the divergences of one op, one per line."""
        if op_index == self.unmodelled_from:
            return f"unchecked: {self.unmodelled}"
        if op_index >= self.checked:
            return "unchecked"
        found = self.at(op_index)
        return "\n".join(str(d) for d in found) if found else "ok"

    def __str__(self) -> str:
        head = (f"{self.checked} ops checked ({self.profile} profile): "
                f"{len(self.divergences)} divergence(s)")
        if self.unmodelled_from is not None:
            head += f"; op {self.unmodelled_from} and later unchecked: {self.unmodelled}"
        return "\n".join([head, *map(str, self.divergences), *self.notes])


# ------------------------------------------------------------------ comparing

Mismatch = tuple[str, tuple[str, ...], str, str]  # field, allowed, observed, reason


def _number(value) -> str:
    return "not reported" if value is None else str(value)


def mismatches(expect: Expect, seen: OpResult) -> list[Mismatch]:
    """Every field of `seen` outside what `expect` allows, rendered for a person."""
    found: list[Mismatch] = []
    for name, render in (("errno", errno_name), ("cpages", _number), ("faults", _number)):
        allowed, value = getattr(expect, name), getattr(seen, name)
        if value not in allowed:
            found.append((name, tuple(map(render, allowed)), render(value),
                          expect.why.get(name, "")))
    if seen.pages != expect.pages:
        found += _sequence("pages", expect.pages, seen.pages, str,
                           expect.page_why, expect.why.get("pages", ""))
    if seen.snapshot != expect.snapshot:
        if seen.snapshot is None or expect.snapshot is None:
            found.append(("snapshot", (_bytes(expect.snapshot),), _bytes(seen.snapshot),
                          expect.why.get("snapshot", "")))
        else:
            found += _sequence("snapshot", expect.snapshot, seen.snapshot, prot_name, (),
                               expect.why.get("snapshot", ""))
    found += compare_pagemap(expect.pagemap, seen.pagemap)
    found += compare_smaps(expect.smaps, seen.smaps)
    found += _node_status(expect, seen)
    found += compare_ksm(expect.ksm, seen.ksm, expect.why.get("ksm", ""))
    return found


def _status(value: int) -> str:
    return f"node {value}" if value >= 0 else f"-{errno_name(-value)}"


def _node_status(expect: Expect, seen: OpResult) -> list[Mismatch]:
    """move_pages' status array: each page's status must be one the model allows."""
    allowed, got = expect.node_status, seen.node_status
    reason = expect.why.get("node_status", "")
    if allowed is None or got is None:
        if allowed is None and got is None:
            return []
        return [("node_status", ("not reported" if allowed is None else
                                 f"{len(allowed)} statuses",),
                 "not reported" if got is None else f"{len(got)} statuses",
                 reason or "only move_pages reports a status array")]
    if len(allowed) != len(got):
        return [("node_status", (f"{len(allowed)} statuses",), f"{len(got)} statuses",
                 "one status per page of the range")]
    found = []
    for i, (values, value) in enumerate(zip(allowed, got)):
        if value not in values:
            why = expect.page_why[i] if i < len(expect.page_why) else reason
            found.append((f"node_status[{i}]", tuple(map(_status, values)), _status(value),
                          why))
    if len(found) > MAX_PER_FIELD:
        rest = len(found) - MAX_PER_FIELD
        found = found[:MAX_PER_FIELD] + [(f"{found[MAX_PER_FIELD][0]}, ...",
                                          ("the model's values",),
                                          f"{rest} more differing entries", reason)]
    return found


def _sequence(name, allowed, seen, render, reasons, reason) -> list[Mismatch]:
    if len(allowed) != len(seen):
        return [(name, (f"{len(allowed)} entries",), f"{len(seen)} entries",
                 reason or f"the op reports {len(allowed)} entries")]
    found = []
    for i, (want, got) in enumerate(zip(allowed, seen)):
        if want != got:
            found.append((f"{name}[{i}]", (render(want),), render(got),
                           reasons[i] if i < len(reasons) else reason))
    if len(found) > MAX_PER_FIELD:
        rest = len(found) - MAX_PER_FIELD
        first_rest = found[MAX_PER_FIELD][0]
        found = found[:MAX_PER_FIELD] + [(f"{first_rest}, ...", ("the model's values",),
                                          f"{rest} more differing entries", reason)]
    return found


def _closest(scored: list[tuple[list[Mismatch], World]], best: int) -> list[Mismatch]:
    """The mismatches of the closest allowed outcome; where several outcomes are equally
    close, each field lists every value they allow."""
    ties = [found for found, _ in scored if len(found) == best]
    merged = []
    for field, allowed, observed, reason in ties[0]:
        values = list(allowed)
        for other in ties[1:]:
            for other_field, other_allowed, _, _ in other:
                if other_field == field:
                    values += [v for v in other_allowed if v not in values]
        merged.append((field, tuple(values), observed, reason))
    return merged


def _bytes(data: bytes | None) -> str:
    return "not reported" if data is None else f"{len(data)} bytes"


# ------------------------------------------------------------------ the loop

def _dedup(worlds: list[World], notes: list[str], index: int) -> list[World]:
    if len(worlds) <= 1:
        return worlds
    unique = list({id(w): w for w in worlds}.values())
    if len(unique) > 1:
        unique = list({w.signature(): w for w in unique}.values())
    if len(unique) > MAX_STATES:
        notes.append(f"op {index}: {len(unique)} possible states, only {MAX_STATES} kept")
        unique = unique[:MAX_STATES]
    return unique


def check(program: Program, trace: Trace) -> Verdict:
    """Check every op that has a result (a crash or hang leaves the rest unchecked)."""
    places = Places(program)
    profile = profile_for(trace.kernel_release)
    ops = program.ops
    count = min(len(ops), len(trace.results))
    states = [World.initial(profile)]
    divergences: list[Divergence] = []
    notes: list[str] = []
    for index in range(count):
        seen = trace.results[index]
        try:
            outcomes = [o for world in states for o in step(world, ops[index], places)]
        except Unmodelled as refusal:
            # Honest refusal: the state after this op is unknown, so neither this op nor any
            # later one is checked (the op's own outcome may already depend on what is not
            # modelled, e.g. a page in a state the model does not know).
            return Verdict(tuple(divergences), index, profile.name, tuple(notes),
                           unmodelled_from=index, unmodelled_op=refusal.what)
        scored = [(mismatches(expect, seen), expect, world) for expect, world in outcomes]
        best = min(len(found) for found, _, _ in scored)
        if best:
            divergences += [Divergence(index, program.where(index), format_op(ops[index]),
                                       field, allowed, observed, reason)
                            for field, allowed, observed, reason in
                            _closest([(f, w) for f, _, w in scored], best)]
        kept = []
        for found, expect, world in scored:
            if len(found) == best:
                world.learn(expect, seen)
                kept.append(world)
        states = _dedup(kept, notes, index)
    if len(trace.results) > len(ops):
        notes.append(f"the trace has {len(trace.results)} results for {len(ops)} ops; "
                     "the extra ones were not checked")
    return Verdict(tuple(divergences), count, profile.name, tuple(notes))


class Simulation:
    """The model run forward without a kernel, op by op, keeping every allowed state: what a
    program generator asks before it adds an op, since an op the model refuses would leave
    the rest of the program unchecked."""

    def __init__(self, program: Program, kernel_release: str = "7.2.0"):
        self.kernel_release = kernel_release
        self.places = Places(program)
        self.states = [World.initial(profile_for(kernel_release))]
        self.notes: list[str] = []
        self.allowed: list[tuple[Expect, ...]] = []   # per op taken
        self.refused: str | None = None              # the last op refused, if any
        taken = 0
        while taken < len(program.ops) and self._step(program.ops[taken]):
            taken += 1
        self.program = program.with_ops(program.ops[:taken])

    def _step(self, op: Op) -> bool:
        try:
            outcomes = [o for world in self.states for o in step(world, op, self.places)]
        except Unmodelled as refusal:
            self.refused = refusal.what
            return False
        self.allowed.append(tuple(dict.fromkeys(expect for expect, _ in outcomes)))
        self.states = _dedup([world for _, world in outcomes], self.notes, len(self.allowed) - 1)
        return True

    def admits(self, op: Op) -> bool:
        """Take `op` and say True, or say False (the model refuses it) and stay where the
        simulation was."""
        candidate = self.program.with_ops(self.program.ops + (op,))
        if Places(candidate).thp_programmed != self.places.thp_programmed:
            # PMD tables are followed only in programs that turn THP on: start again
            return self._adopt(Simulation(candidate, self.kernel_release))
        if self._step(op):
            self.program = candidate
            return True
        refused = self.refused
        self._adopt(Simulation(self.program, self.kernel_release))  # step may have changed the states
        self.refused = refused
        return False

    def _adopt(self, other: "Simulation") -> bool:
        if other.refused is not None:
            self.refused = other.refused
            return False
        self.__dict__.update(other.__dict__)
        return True


def expected(program: Program, kernel_release: str = "7.2.0") -> list[tuple[Expect, ...]]:
    """What the model allows for each op, without a kernel to compare with; the list stops
    before the first op the model does not model."""
    return Simulation(program, kernel_release).allowed
