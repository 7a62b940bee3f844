"""Random programs that exercise uffd-wp and smaps over shmem and file mappings, run on a
kernel, judged by the model and archived.

The fuzzer's generator (fuzz/mutate.py) draws a backed mapping, a uffd registration, a
`uffd_wp` and a `smaps` on the same region rarely together; here each of its programs maps
every region shared, memfd or file (at random), registers most mappings right after the
map, and gets one to three `uffd_wp on|off` ops, a `smaps` and a `pagemap` of random
ranges inserted at random places (the model may refuse some: they are counted). The
archive can be judged again with `hmmfuzz rejudge`.

    .venv/bin/python benchmarks/uffd_shmem_random.py --kernel 7.2 --count 300 --seed 1 \\
        --archive uffd-shmem-7.2-1.pkl
"""

from __future__ import annotations

import random
from dataclasses import replace

from biased_random import run_biased
from fuzz.mutate import Chooser, _regions, generate, valid
from harness.prog import Program
from harness.prog.ops import (
    Map, MapKind, Pagemap, PageRange, Smaps, Switch, UffdRegister, UffdWriteprotect,
)

BACKED = (MapKind.SHARED, MapKind.MEMFD, MapKind.FILE)


def _some_range(rng: random.Random, region) -> PageRange:
    start = rng.randint(0, region.pages - 1)
    return PageRange(region.name, start, min(region.pages, start + rng.randint(1, 8)))


def uffd_shmem_program(rng: random.Random, chooser: Chooser) -> Program:
    while True:
        program = generate(chooser)
        regions = _regions(program)
        ops = []
        for op in program.ops:
            if isinstance(op, Map):
                op = replace(op, kind=rng.choice(BACKED))
                ops.append(op)
                if rng.random() < 0.8:
                    ops.append(UffdRegister(op.proc, op.range))
            else:
                ops.append(op)
        first = 1 + next(i for i, op in enumerate(ops) if isinstance(op, Map)) \
            if any(isinstance(op, Map) for op in ops) else 0
        for _ in range(rng.randint(1, 3)):
            switch = Switch.ON if rng.random() < 0.7 else Switch.OFF
            ops.insert(rng.randint(first, len(ops)),
                       UffdWriteprotect("p0", _some_range(rng, rng.choice(regions)), switch))
        ops.insert(rng.randint(first, len(ops)), Smaps("p0", _some_range(rng, rng.choice(regions))))
        ops.insert(rng.randint(first, len(ops)), Pagemap("p0", _some_range(rng, rng.choice(regions))))
        drawn = valid(regions, ops, "<uffd-shmem-random>")
        if drawn is not None:
            return drawn


def main() -> None:
    run_biased(__doc__.splitlines()[0], uffd_shmem_program, "hmmfuzz-work/uffd-shmem-random")


if __name__ == "__main__":
    main()
