"""Helpers for the model tests: build programs and the traces a kernel would report.

(Named test_model_* to sit with the model tests; it holds no tests itself.)
"""

from __future__ import annotations

import errno
import signal
import textwrap

from harness.prog import (
    PAGE_SIZE, ZERO, Content, OpResult, Page, Program, Trace, digest, parse_program,
)
from reference import check

RELEASE = "7.2.13"
SEGV = Page(signal=int(signal.SIGSEGV))
WROTE = Page()
EFAULT, EPERM, EEXIST, ENOMEM, EBUSY = (errno.EFAULT, errno.EPERM, errno.EEXIST, errno.ENOMEM,
                                       errno.EBUSY)


def program(text: str) -> Program:
    return parse_program(textwrap.dedent(text).strip() + "\n", source="t.prog")


def vpn(prog: Program, region: str, index: int) -> int:
    return prog.regions[region].address // PAGE_SIZE + index


def holds(content: Content) -> Page:
    crc, first_word = digest(content)
    return Page(crc=crc, first_word=first_word)


def zero_page() -> Page:
    return holds(ZERO)


def pattern(prog: Program, seed: int, region: str, index: int) -> Page:
    """What reading page `index` of `region` shows after a write of `seed` there."""
    return holds(Content(seed, vpn(prog, region, index)))


def patterns(prog: Program, seed: int, region: str, start: int, end: int) -> tuple[Page, ...]:
    return tuple(pattern(prog, seed, region, i) for i in range(start, end))


def zeros(n: int) -> tuple[Page, ...]:
    return (zero_page(),) * n


# ---------------------------------------------------------------- observations

def ok() -> OpResult:
    return OpResult()


def err(number: int) -> OpResult:
    return OpResult(errno=number)


def cpu(*pages: Page) -> OpResult:
    return OpResult(pages=tuple(pages))


def wrote(n: int) -> OpResult:
    return OpResult(pages=(WROTE,) * n)


def dev(cpages: int, faults: int, pages=()) -> OpResult:
    return OpResult(cpages=cpages, faults=faults, pages=tuple(pages))


def snap(*prot: int) -> OpResult:
    return OpResult(cpages=len(prot), faults=0, snapshot=bytes(prot))


def trace(*results: OpResult, release: str = RELEASE) -> Trace:
    return Trace(kernel_release=release, results=tuple(results))


# ---------------------------------------------------------------- assertions

def assert_accepts(prog: Program, *results: OpResult):
    verdict = check(prog, trace(*results))
    assert verdict.ok, str(verdict)
    assert verdict.checked == len(results)
    return verdict


def assert_rejects(prog: Program, results, op_index: int, field: str, allowed: str | None = None):
    """The model reports a divergence at op `op_index` on `field` (allowing `allowed`)."""
    verdict = check(prog, trace(*results))
    found = [d for d in verdict.at(op_index) if d.field == field]
    assert found, f"no divergence on {field} at op {op_index}:\n{verdict}"
    if allowed is not None:
        assert found[0].allowed == (allowed,), str(found[0])
    return verdict


def replaced(results, index: int, result: OpResult) -> list[OpResult]:
    changed = list(results)
    changed[index] = result
    return changed
