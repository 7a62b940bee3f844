"""How much checking a program costs next to running it: both measured side by side on the
same programs in one run (random programs, fixed seed, and the corpus).

    .venv/bin/python benchmarks/check_cost.py [--count 200] [--kernel 7.2]

Goal (the model issue): checking costs under a tenth of running.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import reference
from fuzz.mutate import Chooser, generate
from harness.kernel import resolve_kernel
from harness.prog import load_program
from harness.vm.session import KernelSession

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--kernel", default="7.2")
    args = parser.parse_args()
    chooser = Chooser(random.Random(1))
    programs = [load_program(p) for p in sorted((REPO / "corpus").glob("*.txt"))]
    programs += [generate(chooser, max_ops=40) for _ in range(args.count)]
    run_times, check_times = [], []
    with KernelSession(resolve_kernel(args.kernel), Path("/tmp/hmmfuzz-bench")) as session:
        for program in programs:
            started = time.perf_counter()
            trace = session.run(program)
            ran = time.perf_counter()
            reference.check(program, trace)
            checked = time.perf_counter()
            run_times.append(ran - started)
            check_times.append(checked - ran)
    total_run, total_check = sum(run_times), sum(check_times)
    print(f"{len(programs)} programs ({sum(len(p.ops) for p in programs)} ops) on {trace.kernel_release}")
    print(f"run in the VM:  total {total_run:8.2f} s, median {statistics.median(run_times) * 1000:7.1f} ms")
    print(f"model check:    total {total_check:8.2f} s, median {statistics.median(check_times) * 1000:7.1f} ms")
    print(f"check / run = {total_check / total_run:.3f} (goal < 0.1)")


if __name__ == "__main__":
    main()
