"""Replaying a corpus against a kernel: each program must agree with the model, unless it
is a regression program that says on which kernels it is expected to diverge:

    # hmmfuzz-expect: 6.1 divergence: dev_read faults allowed 0

A program with expectations goes red when the expected failure no longer happens on that
kernel (a fix landed: update the expectation) and when anything else goes wrong anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.prog import Program, load_program

from .judge import ProgramVerdict, judge
from .minimize import signature

EXPECT = re.compile(r"^# hmmfuzz-expect: (\S+) (.+)$", re.MULTILINE)


def expectations(path: Path) -> dict[str, str]:
    """Kernel series ("6.1") -> the signature expected there."""
    return {series: wanted.strip() for series, wanted in EXPECT.findall(path.read_text())}


def series_of(release: str) -> str:
    return ".".join(release.split(".")[:2])


@dataclass(frozen=True)
class Replayed:
    path: Path
    program: Program
    verdict: ProgramVerdict
    expected: str | None

    @property
    def observed(self) -> str | None:
        return signature(self.verdict)

    @property
    def passed(self) -> bool:
        return self.observed == self.expected

    def explain(self) -> str:
        if self.passed:
            return "ok" if self.expected is None else f"diverges as expected: {self.expected}"
        if self.expected is None:
            return "\n".join([f"unexpected: {self.observed}", *self.verdict.lines()])
        if self.observed is None:
            return (f"expected `{self.expected}` on this kernel, but every op agrees now "
                    "(fixed? update the hmmfuzz-expect line)")
        return "\n".join([f"expected `{self.expected}`, got `{self.observed}`", *self.verdict.lines()])


def replay(session, path: Path) -> Replayed:
    program = load_program(path)
    trace = session.run(program)
    expected = expectations(path).get(series_of(trace.kernel_release))
    return Replayed(path, program, judge(program, trace, session.last_info.died_signal), expected)


def corpus_files(paths) -> list[Path]:
    files = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.txt")) if path.is_dir() else [path]
    return files
