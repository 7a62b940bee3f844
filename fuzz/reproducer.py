"""C reproducers of programs: the model's expectations rendered as checks in C, compiled
with gcc, and run in the guest of a kernel session."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import reference
from harness.csource import Expected, reproducer
from harness.prog import Program


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


def compile_static(source: str) -> bytes:
    """gcc -static of a reproducer: the guest has no C library of its own."""
    with tempfile.TemporaryDirectory(prefix="hmmfuzz-repro-") as tmp:
        c_file, binary = Path(tmp, "repro.c"), Path(tmp, "repro")
        c_file.write_text(source)
        done = subprocess.run(["gcc", "-O2", "-Wall", "-static", "-o", str(binary), str(c_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise CompileError(f"gcc failed on the reproducer:\n{done.stderr}")
        return binary.read_bytes()
