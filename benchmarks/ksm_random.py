"""Random programs that exercise KSM, run on a kernel, judged by the model and archived.

The fuzzer's generator (fuzz/mutate.py) draws `madvise mergeable` and `ksm_merge` rarely
together; here each of its programs gets every region made mergeable right after its
map and one to three `ksm_merge` ops (now and then a `madvise unmergeable`) inserted at
random places. The archive can be judged again with `hmmfuzz rejudge`.

    .venv/bin/python benchmarks/ksm_random.py --kernel 7.2 --count 300 --seed 1 \\
        --archive ksm-7.2-1.pkl
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from fuzz.archive import ArchiveWriter
from fuzz.mutate import Chooser, _regions, generate, valid
from harness.kernel import resolve_kernel
from harness.prog import Program
from harness.prog.ops import Advice, KsmMerge, Madvise, Map, PageRange
from harness.vm.session import KernelSession
from reference import check


def ksm_program(rng: random.Random, chooser: Chooser) -> Program:
    while True:
        program = generate(chooser)
        regions = _regions(program)
        ops = list(program.ops)
        maps = sum(1 for op in ops[:len(regions)] if isinstance(op, Map))
        mergeable = [Madvise("p0", op.range, Advice.MERGEABLE) for op in ops[:maps]]
        ops = ops[:maps] + mergeable + ops[maps:]
        first = maps + len(mergeable)
        for _ in range(rng.randint(1, 3)):
            ops.insert(rng.randint(first, len(ops)), KsmMerge("p0"))
        if rng.random() < 0.3:
            region = rng.choice(regions)
            at = rng.randint(first, len(ops))
            start = rng.randint(0, region.pages - 1)
            end = min(region.pages, start + rng.randint(1, 8))
            ops.insert(at, Madvise("p0", PageRange(region.name, start, end), Advice.UNMERGEABLE))
        drawn = valid(regions, ops, "<ksm-random>")
        if drawn is not None:
            return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("hmmfuzz-work/ksm-random"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    chooser = Chooser(rng)
    writer = ArchiveWriter(args.archive)
    started = time.monotonic()
    divergent = 0
    with KernelSession(resolve_kernel(args.kernel, log=print), args.workdir) as session:
        for index in range(args.count):
            program = ksm_program(rng, chooser)
            trace = session.run(program)
            writer.add(program, trace, session.last_info.died_signal)
            verdict = check(program, trace)
            if verdict.divergences:
                divergent += 1
                print(f"program {index}: {verdict.divergences[0]}", flush=True)
    writer.close()
    print(f"{args.count} programs, {divergent} with a divergence, "
          f"{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
