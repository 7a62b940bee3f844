"""Runs kept for judging again: each program (canonical text) with the trace the kernel
produced. The kernel's answers do not change when the model does, so a long unguided run on
a kernel is paid for once and re-judged by every later model in seconds (`hmmfuzz rejudge`).

Records are pickled Trace objects beside the program text, one file per run batch: the
archive is a cache of this tree's own observation classes, not an exchange format.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterator

from harness.prog import Program, Trace, format_program, parse_program

FORMAT = 1


@dataclass(frozen=True)
class Run:
    program: Program
    trace: Trace
    died_signal: int


class ArchiveWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.path = path

    def add(self, program: Program, trace: Trace, died_signal: int):
        pickle.dump((FORMAT, format_program(program), trace, died_signal), self.file)
        self.file.flush()

    def close(self):
        self.file.close()


def runs(path: Path) -> Iterator[Run]:
    """The runs of an archive file, in the order they ran; a torn last record (the run was
    killed while writing) ends the file."""
    with path.open("rb") as file:
        while True:
            try:
                version, text, trace, died = pickle.load(file)
            except EOFError:
                return
            except pickle.UnpicklingError:
                return
            if version != FORMAT:
                raise ValueError(f"{path}: archive format {version}, this hmmfuzz reads {FORMAT}")
            yield Run(parse_program(text, f"{path}:{trace.kernel_release}"), _current(trace), died)


def _current(trace: Trace) -> Trace:
    """The trace as this tree's classes hold it: a memory check recorded before its fields
    changed is dropped (not measured) rather than misread. The pickled fields themselves
    are asked, not the class: a field that has a default today (MemoryCheck.again) must not
    stand in for a reading an older runner never took."""
    memory = trace.memory
    if memory is not None and not all(f.name in vars(memory) for f in fields(memory)):
        memory = None
    return replace(trace, memory=memory)
