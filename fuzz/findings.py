"""Findings on disk: one directory per unique signature, holding the first program that
showed it, its report and console log, the kernel, and how often and when it was seen."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.prog import format_program

from .judge import ProgramVerdict
from .minimize import signature


@dataclass(frozen=True)
class Recorded:
    directory: Path
    signature: str
    new: bool


def _slug(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:60]}-{digest}"


class FindingStore:
    def __init__(self, root: Path):
        self.root = root

    def record(self, verdict: ProgramVerdict, pending: bool = False) -> Recorded | None:
        """Count a hit of the verdict's signature; the first hit keeps the program, report
        and console. `pending`: a campaign reproduces it on a fresh VM now (`confirm`
        follows), so it is not confirmed yet but already on disk should the run stop."""
        wanted = signature(verdict)
        if wanted is None:
            return None
        directory = self.root / _slug(wanted)
        meta_path = directory / "finding.json"
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        new = not meta_path.exists()
        if new:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "program.txt").write_text(format_program(verdict.program))
            (directory / "report.txt").write_text("\n".join(verdict.lines(observations=True)) + "\n")
            (directory / "console.log").write_text(verdict.trace.console)
            meta = {"signature": wanted, "kernel": verdict.trace.kernel_release, "hits": 0,
                    "first_seen": now}
            if pending:
                meta["confirmed"] = False
        else:
            meta = json.loads(meta_path.read_text())
        meta["hits"] += 1
        meta["last_seen"] = now
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return Recorded(directory, wanted, new)

    def confirm(self, wanted: str, reproduction: dict) -> None:
        """The outcome of reproducing a pending finding on a fresh VM."""
        meta_path = self.root / _slug(wanted) / "finding.json"
        meta = json.loads(meta_path.read_text())
        meta["reproduction"] = reproduction
        meta["confirmed"] = reproduction["reproduced"] > 0
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    def all(self) -> list[dict]:
        return [json.loads(p.read_text()) | {"directory": str(p.parent)}
                for p in sorted(self.root.glob("*/finding.json"))]
