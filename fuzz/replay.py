"""Replaying a corpus against a kernel: each program must agree with the model, unless it
is a regression program that says on which kernels it is expected to diverge:

    # hmmfuzz-expect: 6.1 divergence: dev_read faults allowed 0

A program with expectations goes red when the expected failure no longer happens on that
kernel (a fix landed: update the expectation) and when anything else goes wrong anywhere.
Several lines for one kernel series name failures any of which is expected: a memory
corruption (a use-after-free write) is reported by whatever code next meets the corrupted
memory, which differs from run to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.prog import Program, load_program

from .judge import ProgramVerdict, judge
from .minimize import signature

EXPECT = re.compile(r"^# hmmfuzz-expect: (\S+) (.+)$", re.MULTILINE)


def expectations(path: Path) -> dict[str, tuple[str, ...]]:
    """Kernel series ("6.1") -> the signatures expected there (any one of them)."""
    found: dict[str, tuple[str, ...]] = {}
    for series, wanted in EXPECT.findall(path.read_text()):
        found[series] = found.get(series, ()) + (wanted.strip(),)
    return found


def series_of(release: str) -> str:
    return ".".join(release.split(".")[:2])


@dataclass(frozen=True)
class Replayed:
    path: Path
    program: Program
    verdict: ProgramVerdict
    expected: tuple[str, ...] = ()   # none: the program must agree with the model

    @property
    def observed(self) -> str | None:
        return signature(self.verdict)

    @property
    def passed(self) -> bool:
        return self.observed in self.expected if self.expected else self.observed is None

    def explain(self) -> str:
        wanted = " or ".join(f"`{e}`" for e in self.expected)
        if self.passed:
            return f"diverges as expected: {self.observed}" if self.expected else "ok"
        if not self.expected:
            return "\n".join([f"unexpected: {self.observed}", *self.verdict.lines()])
        if self.observed is None:
            return (f"expected {wanted} on this kernel, but every op agrees now "
                    "(fixed? update the hmmfuzz-expect line)")
        return "\n".join([f"expected {wanted}, got `{self.observed}`", *self.verdict.lines()])


def replay(session, path: Path) -> Replayed:
    program = load_program(path)
    trace = session.run(program)
    expected = expectations(path).get(series_of(trace.kernel_release), ())
    return Replayed(path, program, judge(program, trace, session.last_info.died_signal), expected)


def corpus_files(paths) -> list[Path]:
    files = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.txt")) if path.is_dir() else [path]
    return files
