"""Coverage guidance against unguided generation of the same op set, side by side on one
kernel with the same time budget each: time to the first finding and distinct findings.

    .venv/bin/python benchmarks/guided_vs_unguided.py [--kernel 6.12] [--seconds 300]

Guided: `hmmfuzz fuzz` (Atheris over the model's coverage, program mutator, corpus seeds).
Unguided: fresh programs from the same generator (fuzz.mutate.generate), judged the same way.
A finding counts when its signature is new; both sides confirm nothing more than that, so
the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz.findings import FindingStore
from fuzz.judge import judge
from fuzz.minimize import signature
from fuzz.mutate import Chooser, generate
from harness.kernel import resolve_kernel
from harness.vm.session import KernelSession

REPO = Path(__file__).resolve().parent.parent


def unguided(kernel: str, seconds: int) -> tuple[float | None, set[str], int]:
    chooser = Chooser(random.Random(1))
    found: set[str] = set()
    first = None
    runs = 0
    workdir = Path(tempfile.mkdtemp(prefix="hmmfuzz-unguided-"))
    store = FindingStore(workdir / "findings")  # kept, so each finding can be minimized
    with KernelSession(resolve_kernel(kernel), workdir) as session:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            program = generate(chooser, max_ops=24)
            verdict = judge(program, session.run(program), session.last_info.died_signal)
            wanted = signature(verdict)
            runs += 1
            store.record(verdict)
            if wanted and wanted not in found:
                found.add(wanted)
                first = first or time.monotonic() - started
    print(f"unguided findings kept in {store.root}")
    return first, found, runs


def guided(kernel: str, seconds: int) -> tuple[float | None, set[str], int]:
    workdir = Path(tempfile.mkdtemp(prefix="hmmfuzz-guided-"))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "fuzz.cli", "fuzz", "--kernel", kernel, "--time", str(seconds),
                    "--workdir", str(workdir), "--seeds", str(REPO / "corpus")],
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metas = [json.loads(p.read_text()) for p in workdir.glob("findings/*/finding.json")]
    campaign_start = json.loads((workdir / "workers" / "0.json").read_text())["started"]
    firsts = [time.mktime(time.strptime(m["first_seen"], "%Y-%m-%dT%H:%M:%S")) - campaign_start
              for m in metas]
    runs = json.loads((workdir / "workers" / "0.json").read_text())["execs"]
    del started
    return (min(firsts) if firsts else None), {m["signature"] for m in metas}, runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="6.12")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--only", choices=["guided", "unguided"])
    args = parser.parse_args()
    sides = {"guided": guided, "unguided": unguided}
    rows = [(name, *run(args.kernel, args.seconds)) for name, run in sides.items()
            if args.only in (None, name)]
    print(f"kernel {args.kernel}, {args.seconds} s each")
    for name, first, found, runs in rows:
        when = f"{first:.0f} s" if first is not None else "none"
        print(f"{name:9s} programs {runs:5d}  first finding {when:>6s}  distinct findings {len(found)}")
        for item in sorted(found):
            print(f"          {item}")


if __name__ == "__main__":
    main()
