"""Calibrate the per-program leak check on programs known to be clean.

Runs the corpus and random programs on a kernel and records, per program, the memory
counters the runner read before it and after all its processes were gone (wire.h enum
wire_memory_counter). The records feed fuzz/judge.py's leak threshold and its unit tests.

    .venv/bin/python tests/leak_calibration.py --kernel 7.2 --random 200 \\
        --out tests/data/leak_calibration_7.2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fuzz.cli import _random_programs  # noqa: E402
from fuzz.judge import leaked_pages  # noqa: E402
from harness.kernel import resolve_kernel  # noqa: E402
from harness.prog import Ending, load_program  # noqa: E402
from harness.vm.session import KernelSession  # noqa: E402


def programs(random_count: int, seed: int):
    for path in sorted((REPO / "corpus").glob("*.txt")):
        yield path.name, load_program(path)
    for op_set in ("modelled", "all"):
        for index, program in enumerate(_random_programs(op_set, random_count, seed)):
            yield f"random-{op_set}-{seed}-{index}", program


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--random", type=int, default=100, help="random programs per op set")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    kernel = resolve_kernel(args.kernel, log=lambda message: None)
    records = []
    started = time.monotonic()
    with KernelSession(kernel, Path("/tmp") / f"leak-calibration-{args.kernel}",
                       log=lambda message: None) as session:
        for name, program in programs(args.random, args.seed):
            trace = session.run(program)
            if trace.memory is None or trace.ending is Ending.CRASHED:
                print(f"{name}: {trace.ending.value}, not measured")
                continue
            leak = leaked_pages(trace.memory)
            records.append({"program": name, "ops": len(program.ops),
                            "ending": trace.ending.value, "leaked": leak,
                            "before": dataclasses.asdict(trace.memory.before),
                            "after": dataclasses.asdict(trace.memory.after),
                            "again": (dataclasses.asdict(trace.memory.again)
                                      if trace.memory.again else None)})
            print(f"{name}: leaked {leak}  free {trace.memory.before.free_total} -> "
                  f"{trace.memory.after.free_total}")
        release = session.hello.release
    leaks = [r["leaked"] for r in records if r["leaked"] is not None]
    summary = {"kernel": release, "programs": len(records), "seconds": time.monotonic() - started,
               "leaked_min": min(leaks, default=None), "leaked_max": max(leaks, default=None),
               "inconclusive": sum(r["leaked"] is None for r in records)}
    args.out.write_text(json.dumps({"summary": summary, "records": records}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
