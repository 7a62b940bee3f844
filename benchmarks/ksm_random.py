"""Random programs that exercise KSM, run on a kernel, judged by the model and archived.

The fuzzer's generator (fuzz/mutate.py) draws `madvise mergeable` and `ksm_merge` rarely
together; here each of its programs gets every region made mergeable right after its
map and one to three `ksm_merge` ops (now and then a `madvise unmergeable`) inserted at
random places. The archive can be judged again with `hmmfuzz rejudge`.

    .venv/bin/python benchmarks/ksm_random.py --kernel 7.2 --count 300 --seed 1 \\
        --archive ksm-7.2-1.pkl
"""

from __future__ import annotations

import random

from biased_random import run_biased
from fuzz.mutate import Chooser, _regions, generate, valid
from harness.prog import Program
from harness.prog.ops import Advice, KsmMerge, Madvise, Map, PageRange


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
    run_biased(__doc__.splitlines()[0], ksm_program, "hmmfuzz-work/ksm-random")


if __name__ == "__main__":
    main()
