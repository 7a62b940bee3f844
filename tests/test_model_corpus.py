"""The seed corpus restates what hmm-tests.c asserts on each op (`# hmm-tests: ret == 0,
cpages == npages, faults == 1`, `ptr[i] == i (here: seed=1)`): the model must predict
exactly that, with no other allowed outcome."""

import errno
import re
from pathlib import Path

import pytest
from test_model_support import pattern

from harness.prog import CpuRead, load_program
from reference import expected, uapi

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
RET = re.compile(r"\bret == (0|-E[A-Z]+)")
CPAGES = re.compile(r"\bcpages == (npages|\d+)")
FAULTS = re.compile(r"\bfaults == (\d+)")
SEED = re.compile(r"\(here: seed=(\d+)\)")
# A snapshot assertion on every page of the range: `m[i] == HMM_DMIRROR_PROT_WRITE`.
EVERY_PAGE_PROT = re.compile(r"\bm\[i\] == HMM_DMIRROR_PROT_([A-Z_]+)")


def _assertions(comment: str) -> str | None:
    """The unconditional part of a `hmm-tests:` comment."""
    if "hmm-tests:" not in comment:
        return None
    said = comment.split("hmm-tests:", 1)[1].strip()
    return None if said.startswith("if ") else said


def _restates_assertions(path: Path) -> bool:
    comments = (located.comment or "" for located in load_program(path).located_ops)
    return any(said and (RET.search(said) or SEED.search(said))
               for said in map(_assertions, comments))


# Only the files that restate an unconditional hmm-tests.c assertion (open_close has none).
FILES = [path for path in sorted(CORPUS.glob("hmm_tests_*.txt")) if _restates_assertions(path)]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_the_model_predicts_what_hmm_tests_asserts(path):
    prog = load_program(path)
    predictions = expected(prog)
    checked = 0
    for index, located in enumerate(prog.located_ops):
        if index == len(predictions):
            # expected() follows every state the model keeps and stops where one of them
            # is refused, though an observation before would rule that state out (the
            # trace-driven check goes on: tests/test_vm_corpus.py)
            break
        said = _assertions(located.comment or "")
        if said is None:
            continue
        allowed = predictions[index]
        assert len(allowed) == 1, f"{prog.where(index)}: several outcomes allowed"
        got = allowed[0]
        op = located.op
        if match := RET.search(said):
            value = match.group(1)
            want = 0 if value == "0" else getattr(errno, value[1:])
            assert got.errno == (want,), f"{prog.where(index)}: {said} but model {got}"
            checked += 1
        if match := CPAGES.search(said):
            want = op.range.npages if match.group(1) == "npages" else int(match.group(1))
            assert got.cpages == (want,), f"{prog.where(index)}: {said} but model {got}"
        if match := FAULTS.search(said):
            assert got.faults == (int(match.group(1)),), f"{prog.where(index)}: {said}"
        if match := EVERY_PAGE_PROT.search(said):
            want = bytes([getattr(uapi, f"PROT_{match.group(1)}")] * op.range.npages)
            assert got.snapshot == want, f"{prog.where(index)}: {said} but model {got}"
            checked += 1
        if (match := SEED.search(said)) and isinstance(op, CpuRead):
            seed = int(match.group(1))
            want = tuple(pattern(prog, seed, op.range.region, i) for i in op.range)
            assert got.pages == want, f"{prog.where(index)}: {said}"
            checked += 1
    assert checked, "the file restates hmm-tests assertions, yet none was checked"
