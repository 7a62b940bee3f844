"""C reproducers of programs: the model's expectations rendered as checks in C, compiled
with gcc, and run in the guest of a kernel session."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import reference
from harness.csource import Expected, reproducer, selftest
from harness.prog import Ending, Program
from harness.vm.console import ConsoleReport, find_reports
from harness.vm.session import Execution, KernelSession


def expected_per_op(program: Program, kernel_release: str) -> list[Expected | None]:
    """What the model allows each op to report, as C can check it; None from the first op
    the model does not model. Where the model allows several outcomes, each scalar may be
    any of the allowed values and pages or snapshot bytes are checked only if every allowed
    outcome agrees on them."""
    per_op: list[Expected | None] = []
    for alternatives in reference.expected(program, kernel_release):
        first = alternatives[0]
        same = lambda name: all(getattr(a, name) == getattr(first, name) for a in alternatives)  # noqa: E731
        union = lambda name: tuple(dict.fromkeys(v for a in alternatives for v in getattr(a, name)))  # noqa: E731
        per_op.append(Expected(
            errno=union("errno"), cpages=union("cpages"), faults=union("faults"),
            pages=first.pages if same("pages") else None,
            snapshot=first.snapshot if same("snapshot") else None,
        ))
    return per_op


def render(program: Program, kernel_release: str, title: str = "") -> str:
    return reproducer(program, expected_per_op(program, kernel_release), title)


class CompileError(Exception):
    pass


def compile_static(source: str, include: Path | None = None) -> bytes:
    """gcc -static of a reproducer: the guest has no C library of its own. `include`: where
    a TEST_F finds kselftest_harness.h."""
    with tempfile.TemporaryDirectory(prefix="hmmfuzz-repro-") as tmp:
        c_file, binary = Path(tmp, "repro.c"), Path(tmp, "repro")
        c_file.write_text(source)
        flags = ["-I", str(include)] if include else []
        done = subprocess.run(["gcc", "-O2", "-Wall", "-static", *flags, "-o", str(binary), str(c_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise CompileError(f"gcc failed on the reproducer:\n{done.stderr}")
        return binary.read_bytes()


def selftest_name(text: str) -> str:
    """A C identifier for a TEST_F, from a finding's signature or a file name."""
    words = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return "hmmfuzz_" + words[:60].rstrip("_")


@dataclass(frozen=True)
class Written:
    reproducer: Path
    selftest: Path


def write_c(program: Program, kernel_release: str, directory: Path, stem: str,
            title: str) -> Written:
    """`<stem>.repro.c` (standalone) and `<stem>.test.c` (TEST_F) beside the program."""
    expected = expected_per_op(program, kernel_release)
    paths = Written(directory / f"{stem}.repro.c", directory / f"{stem}.test.c")
    paths.reproducer.write_text(reproducer(program, expected, title))
    paths.selftest.write_text(selftest(program, expected, selftest_name(title or stem), title))
    return paths


@dataclass(frozen=True)
class ReproducerRun:
    """A C reproducer run once in the guest, and what the kernel said meanwhile."""

    execution: Execution
    reports: tuple[ConsoleReport, ...]

    @property
    def outcome(self) -> str:
        if self.reports:
            return f"kernel: {self.reports[0].title}"
        if self.execution.ending is not Ending.COMPLETED:
            return f"the guest {self.execution.ending.value} under it"
        code = self.execution.exit_code
        return {0: "every check held", 1: "checks failed"}.get(code, f"exit status {self.execution.status}")

    def reproduces(self, wanted: str) -> bool:
        """Whether this run shows the finding of signature `wanted`."""
        if wanted.startswith("crash: "):
            return any(report.title == wanted.removeprefix("crash: ") for report in self.reports)
        if wanted.startswith("divergence: "):
            return self.execution.exit_code == 1
        return self.execution.ending is not Ending.COMPLETED or self.execution.exit_code not in (0, None)

    @property
    def last_step(self) -> str | None:
        """The step the reproducer was in when the guest died (it announces each step in the
        kernel log), or None."""
        steps = re.findall(r"hmmfuzz: (step \d+: .*)", self.execution.console)
        return steps[-1].strip() if steps else None

    @property
    def status(self) -> int:
        """hmmfuzz's exit statuses: 0 passed, 1 checks failed, 3 the kernel crashed or hung."""
        if self.reports or self.execution.ending is not Ending.COMPLETED:
            return 3
        return 0 if self.execution.exit_code == 0 else 1


def run_in_guest(session: KernelSession, source: str, include: Path | None = None) -> ReproducerRun:
    execution = session.execute(compile_static(source, include))
    return ReproducerRun(execution, tuple(find_reports(execution.console)))
