"""The corpus on the real kernels: every program, judged by the reference model, agrees on
every op (the hmm-tests.c scenarios pass on 6.1, 6.12 and 7.2)."""

from __future__ import annotations

import pytest

from fuzz.replay import replay

from conftest import CORPUS, kernel_fixture

pytestmark = pytest.mark.vm
PROGRAMS = sorted(CORPUS.glob("*.txt"))
# Findings kept as regression programs: each must still fail exactly as its
# `# hmmfuzz-expect:` line says on that kernel (a crash reboots the guest, which is fine),
# or agree on every op where it has no such line.
REGRESSIONS = sorted((CORPUS / "regressions").glob("*.txt"))


session = kernel_fixture("session")


# Refusals that only a profile makes (reference/profile.py): on kernels the model states
# these ops for, the whole program is checked; on older ones it is checked up to the op.
PROFILE_REFUSALS = {"thp on kernels before 7.2": "thp"}


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_every_op_agrees_with_the_model(session, path):
    replayed = replay(session, path)
    verdict = replayed.verdict.model
    if verdict.unmodelled_op in PROFILE_REFUSALS:
        assert verdict.profile != "newest"
        refused = replayed.program.ops[verdict.unmodelled_from]
        assert refused.keyword == PROFILE_REFUSALS[verdict.unmodelled_op]
        assert verdict.checked == verdict.unmodelled_from
    else:
        assert verdict.checked == len(replayed.program.ops)
    assert replayed.passed, replayed.explain()


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_each_regression_program_still_does_what_its_finding_says(session, path):
    """A program with a `# hmmfuzz-expect:` line for this kernel must fail exactly so; one
    without (a finding whose kernel behaviour the model states, kept to notice the fix) must
    agree with the model on every op it checks."""
    replayed = replay(session, path)
    assert replayed.passed, replayed.explain()
