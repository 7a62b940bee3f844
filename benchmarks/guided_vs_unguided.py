"""Coverage guidance against unguided generation of the same op set, side by side on one
kernel with the same time budget each: time to the first finding and distinct findings.

    .venv/bin/python benchmarks/guided_vs_unguided.py [--kernel 6.12] [--seconds 300]

Both sides are `hmmfuzz fuzz` campaigns with one worker: the same VM handling, judging,
confirmation of each new signature on a fresh VM, and finding store. Guided: Atheris over the
model's coverage and the kernel-reported features (fuzz/feedback.py), the program mutator,
corpus seeds. Unguided (`--unguided`): fresh programs from the fuzzer's generator
(fuzz.mutate.generate). A finding counts from the moment it was recorded (after
confirmation), on both sides alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def campaign(kernel: str, seconds: int, guided: bool) -> tuple[float | None, set[str], int]:
    workdir = Path(tempfile.mkdtemp(prefix=f"hmmfuzz-{'guided' if guided else 'unguided'}-"))
    command = [sys.executable, "-m", "fuzz.cli", "fuzz", "--kernel", kernel, "--time", str(seconds),
               "--workdir", str(workdir), "--seeds", str(REPO / "corpus")]
    subprocess.run(command + ([] if guided else ["--unguided"]), cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = json.loads((workdir / "workers" / "0.json").read_text())
    metas = [json.loads(p.read_text()) for p in workdir.glob("findings/*/finding.json")]
    firsts = [time.mktime(time.strptime(m["first_seen"], "%Y-%m-%dT%H:%M:%S")) - stats["started"]
              for m in metas]
    print(f"{'guided' if guided else 'unguided'} campaign kept in {workdir}")
    return (min(firsts) if firsts else None), {m["signature"] for m in metas}, stats["execs"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="6.12")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--only", choices=["guided", "unguided"])
    args = parser.parse_args()
    sides = {"guided": True, "unguided": False}
    rows = [(name, *campaign(args.kernel, args.seconds, guided)) for name, guided in sides.items()
            if args.only in (None, name)]
    print(f"kernel {args.kernel}, {args.seconds} s each")
    for name, first, found, runs in rows:
        when = f"{first:.0f} s" if first is not None else "none"
        print(f"{name:9s} programs {runs:5d}  first finding {when:>6s}  distinct findings {len(found)}")
        for item in sorted(found):
            print(f"          {item}")


if __name__ == "__main__":
    main()
