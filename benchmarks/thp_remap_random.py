"""Random programs that mremap THPs, the huge zero PMD and device THPs, run on a kernel,
judged by the model and archived.

The fuzzer's generator draws THP-sized regions, a THP mode and an mremap of them together
rarely; here each program maps a 2048-page region with THP on, faults THPs or the huge zero
page in, maybe migrates 2 MiB pieces to the device and clears soft-dirty bits, then
mremaps part or all of it (to an aligned target or not, with MREMAP_DONTUNMAP or not) and
looks at both places (pagemap, snapshot, CPU and device accesses, migrations, munmaps).

    .venv/bin/python benchmarks/thp_remap_random.py --kernel 7.2 --count 300 --seed 1 \\
        --archive thp-remap-7.2-1.pkl
"""

from __future__ import annotations

import random

from biased_random import run_biased
from fuzz.mutate import Chooser
from harness.prog import Program, parse_program

PMD = 512
PAGES = 2048


def _bounds(rng: random.Random) -> tuple[int, int]:
    """Mostly a whole aligned 2 MiB, sometimes any range."""
    if rng.random() < 0.6:
        start = rng.randrange(0, PAGES // PMD) * PMD
        return start, start + PMD
    start = rng.randrange(0, PAGES - 1)
    return start, min(PAGES, start + rng.randint(1, 700))


def _piece(rng: random.Random, region: str) -> str:
    start, end = _bounds(rng)
    return f"{region}[{start}:{end}]"


def _look(rng: random.Random, region: str) -> str:
    start = rng.randrange(0, PAGES - 2)
    window = f"{region}[{start}:{start + 2}]"
    return rng.choice([
        f"p0 pagemap {window}", f"p0 snapshot d0 {window}", f"p0 read {window}",
        f"p0 dev_read d0 {window}", f"p0 write {window} seed={rng.randint(1, 9)}",
        f"p0 migrate_to_dev d0 {_piece(rng, region)}",
        f"p0 migrate_to_sys d0 {_piece(rng, region)}",
        f"p0 read {_piece(rng, region)}", f"p0 munmap {_piece(rng, region)}",
    ])


def _mremap(rng: random.Random) -> str:
    if rng.random() < 0.7:
        start = rng.randrange(0, PAGES // PMD) * PMD
        length = PMD * rng.randint(1, (PAGES - start) // PMD)
    else:
        start = rng.randrange(0, PAGES - 1)
        length = rng.randint(1, PAGES - start)
    offset = rng.choice([0, 0, 128, 256, rng.randrange(0, PMD)])
    room = PAGES - length - offset
    target = offset + rng.randrange(0, room // PMD + 1) * PMD if room >= 0 else 0
    dontunmap = " dontunmap" if rng.random() < 0.4 else ""
    return f"p0 mremap a[{start}:{start + length}] b[{target}:{target + length}]{dontunmap}"


def thp_remap_program(rng: random.Random, chooser: Chooser) -> Program:
    lines = [f"region a pages={PAGES}", f"region b pages={PAGES}", "p0 open d0 dmirror0",
             rng.choice(["p0 thp always madvise", "p0 thp madvise madvise"]),
             f"p0 map a[0:{PAGES}]", f"p0 madvise a[0:{PAGES}] hugepage"]
    for _ in range(rng.randint(1, 4)):
        start, end = _bounds(rng)
        piece = f"a[{start}:{end}]"
        lines.append(rng.choice([f"p0 write {piece} seed={rng.randint(1, 9)}",
                                 f"p0 read {piece}", f"p0 migrate_to_dev d0 {piece}",
                                 f"p0 dev_read d0 {piece}"]))
        # tells a THP from the small pages of a failed THP allocation
        lines.append(f"p0 pagemap a[{start}:{start + 1}]")
    if rng.random() < 0.3:
        lines.append("p0 clear_soft_dirty")
    for _ in range(rng.randint(1, 2)):
        lines.append(_mremap(rng))
        for _ in range(rng.randint(1, 5)):
            lines.append(_look(rng, rng.choice("ab")))
    return parse_program("\n".join(lines) + "\n", "<thp-remap-random>")


def main() -> None:
    run_biased(__doc__.splitlines()[0], thp_remap_program, "hmmfuzz-work/thp-remap-random")


if __name__ == "__main__":
    main()
