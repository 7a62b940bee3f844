"""The shared driver of the biased random runs (ksm_random.py, uffd_shmem_random.py): draw
programs with a biased generator, run each on a kernel, archive it for `hmmfuzz rejudge`
and print every program the model disagrees with."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Callable

from fuzz.archive import ArchiveWriter
from fuzz.mutate import Chooser
from harness.kernel import resolve_kernel
from harness.prog import Program
from harness.vm.session import KernelSession
from reference import check

BiasedGenerator = Callable[[random.Random, Chooser], Program]


def run_biased(description: str, draw: BiasedGenerator, workdir: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    chooser = Chooser(rng)
    writer = ArchiveWriter(args.archive)
    started = time.monotonic()
    divergent = unmodelled = 0
    with KernelSession(resolve_kernel(args.kernel, log=print), args.workdir) as session:
        for index in range(args.count):
            program = draw(rng, chooser)
            trace = session.run(program)
            writer.add(program, trace, session.last_info.died_signal)
            verdict = check(program, trace)
            unmodelled += verdict.unmodelled_from is not None
            if verdict.divergences:
                divergent += 1
                print(f"program {index}: {verdict.divergences[0]}", flush=True)
    writer.close()
    print(f"{args.count} programs, {divergent} with a divergence, {unmodelled} stopped at a "
          f"refused op, {time.monotonic() - started:.0f} s")
