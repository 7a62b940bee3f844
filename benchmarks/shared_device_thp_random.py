"""Random programs around a device THP shared by fork (7.2), run on a kernel, judged by the
model and archived.

The fuzzer's generator rarely migrates a whole aligned 2 MiB and forks before it comes
back; here each program starts with one or two device THPs (a written THP or an empty
PMD) and a fork, then draws ops that bring them back or look at them, from either
process: CPU reads and writes, device reads and writes of another device or of a dmirror
the child opens, migrate_to_sys, release, close, exit, flags (FAIL_ALLOC), pagemap,
snapshot, munmap, mprotect, another fork. The archive can be judged again with
`hmmfuzz rejudge`.

    .venv/bin/python benchmarks/shared_device_thp_random.py --kernel 7.2 --count 200 \\
        --seed 1 --archive shared-device-thp-7.2-1.pkl
"""

from __future__ import annotations

import random

from biased_random import run_biased
from fuzz.mutate import Chooser
from harness.prog import Program, ParseError, parse_program

PREFIX = """region a pages=1024
region b pages=1024
p0 open d0 dmirror0
p0 open d1 dmirror1
p0 thp madvise madvise
p0 map a[0:1024]
p0 map b[0:1024]
"""


def _range(rng: random.Random, region: str) -> str:
    start = rng.choice([0, 0, rng.randrange(512), 510])
    return f"{region}[{start}:{min(1024, start + rng.choice([1, 2, 4, 512 - start or 1]))}]"


def _tail_op(rng: random.Random, procs: list[str], fds: dict[str, list[str]],
             counter: list[int]) -> str:
    proc = rng.choice(procs)
    region = rng.choice("ab")
    kind = rng.choice(["read", "read", "write", "dev_read", "dev_write", "migrate_to_sys",
                       "migrate_to_sys", "pagemap", "pagemap", "snapshot", "open", "release",
                       "flags", "munmap", "mprotect", "fork", "close"])
    fd = rng.choice(fds[proc]) if fds[proc] else None
    if kind == "read":
        return f"{proc} read {_range(rng, region)}"
    if kind == "write":
        return f"{proc} write {_range(rng, region)} seed={rng.randint(2, 9)}"
    if kind == "pagemap":
        return f"{proc} pagemap {region}[0:2]"
    if kind == "munmap":
        return f"{proc} munmap {_range(rng, region)}"
    if kind == "mprotect":
        return f"{proc} mprotect {_range(rng, region)} {rng.choice(['r', 'rw'])}"
    if kind == "open" or fd is None:
        counter[0] += 1
        name = f"f{counter[0]}{rng.choice('01')}"
        fds[proc].append(name)
        return f"{proc} open {name} dmirror{name[-1]}"
    if kind == "fork" and len(procs) < 3:
        child = f"p{len(procs)}"
        procs.append(child)
        fds[child] = list(fds[proc])
        return f"{proc} fork {child}"
    if kind == "close":
        fds[proc].remove(fd)
        return f"{proc} close {fd}"
    if kind in ("release", "fork"):
        return f"{proc} release {fd}"
    if kind == "flags":
        return f"{proc} flags {fd} 1"
    if kind in ("dev_read", "dev_write") and fd[-1] != "1":
        # a device access through dmirror0 to its own device pages oopses or warns
        # (docs/findings.md #3, #5): through dmirror1 fds only
        kind = "snapshot"
    if kind == "dev_write":
        return f"{proc} dev_write {fd} {_range(rng, region)} seed={rng.randint(2, 9)}"
    if kind == "migrate_to_sys":
        return f"{proc} migrate_to_sys {fd} {region}[0:512]"
    return f"{proc} {kind} {fd} {_range(rng, region)}"


def shared_device_thp_program(rng: random.Random, chooser: Chooser) -> Program:
    while True:
        lines = [PREFIX]
        for region, seed in (("a", 1), ("b", 2)):
            if rng.random() < 0.6:
                lines.append(f"p0 madvise {region}[0:512] hugepage\n"
                             f"p0 write {region}[0:512] seed={seed}\n")
            if region == "a" or rng.random() < 0.5:
                lines.append(f"p0 migrate_to_dev d0 {region}[0:512]\n")
        lines.append("p0 fork p1\n")
        procs, fds, counter = ["p0", "p1"], {"p0": ["d0", "d1"], "p1": ["d0", "d1"]}, [0]
        for _ in range(rng.randint(3, 12)):
            lines.append(_tail_op(rng, procs, fds, counter) + "\n")
        if rng.random() < 0.3:
            lines.append(f"{rng.choice(procs[1:])} exit\n")
            lines.append("p0 read a[0:512]\n")
        try:
            return parse_program("".join(lines), "<shared-device-thp-random>")
        except ParseError:
            continue


def main() -> None:
    run_biased(__doc__.splitlines()[0], shared_device_thp_program,
               "hmmfuzz-work/shared-device-thp-random")


if __name__ == "__main__":
    main()
