"""Corpus replay for CI: ok programs pass, regression programs pass only while they still
diverge as their `# hmmfuzz-expect:` line says, on the kernel it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.replay import Replayed, expectations, series_of
from fuzz.judge import judge
from harness.prog import ZERO, OpResult, Page, Trace, digest, load_program

OK_PROGRAM = """\
region a pages=2
p0 map a[0:2]
p0 open d0 dmirror0
p0 dev_read d0 a[0:2]
"""
EXPECT_LINE = "# hmmfuzz-expect: 7.2 divergence: dev_read faults allowed 1\n"


def test_expectations_are_read_per_kernel_series(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(EXPECT_LINE + "# hmmfuzz-expect: 6.1 crash: WARNING in foo\n" + OK_PROGRAM)
    assert expectations(path) == {"7.2": ("divergence: dev_read faults allowed 1",),
                                  "6.1": ("crash: WARNING in foo",)}
    assert series_of("6.12.117") == "6.12"


def _replayed(tmp_path, text, faults) -> Replayed:
    path = tmp_path / "p.txt"
    path.write_text(text)
    program = load_program(path)
    zero_page = Page(0, *digest(ZERO))  # untouched memory reads as zeros
    results = (OpResult(), OpResult(), OpResult(cpages=2, faults=faults, pages=(zero_page,) * 2))
    verdict = judge(program, Trace("7.2.13", results))
    return Replayed(path, program, verdict, expectations(path).get("7.2", ()))


def test_a_regression_program_passes_while_it_still_diverges_as_expected(tmp_path):
    # faults=2 where the model allows 1: the expected divergence
    replayed = _replayed(tmp_path, EXPECT_LINE + OK_PROGRAM, faults=2)
    assert replayed.observed == "divergence: dev_read faults allowed 1"
    assert replayed.passed


def test_a_fixed_regression_goes_red_and_says_to_update_the_expectation(tmp_path):
    replayed = _replayed(tmp_path, EXPECT_LINE + OK_PROGRAM, faults=1)
    assert not replayed.passed
    assert "fixed? update the hmmfuzz-expect line" in replayed.explain()


def test_any_of_several_expectations_for_one_kernel_passes(tmp_path):
    # a use-after-free is reported by whatever meets the corrupted memory first
    other = "# hmmfuzz-expect: 7.2 crash: BUG: Bad page map in unmap_page_range\n"
    replayed = _replayed(tmp_path, other + EXPECT_LINE + OK_PROGRAM, faults=2)
    assert replayed.passed
    assert replayed.explain() == "diverges as expected: divergence: dev_read faults allowed 1"
    replayed = _replayed(tmp_path, other + OK_PROGRAM, faults=2)
    assert not replayed.passed
    assert replayed.explain().startswith("expected `crash: BUG: Bad page map in unmap_page_range`, "
                                         "got `divergence: dev_read faults allowed 1`")


def test_an_ordinary_program_must_agree(tmp_path):
    assert _replayed(tmp_path, OK_PROGRAM, faults=1).passed
    assert not _replayed(tmp_path, OK_PROGRAM, faults=2).passed


@pytest.mark.vm
def test_the_pytest_plugin_replays_programs_on_the_real_kernel(pytester):
    pytester.makefile(".txt", ok=OK_PROGRAM, fixed_regression=EXPECT_LINE + OK_PROGRAM)
    result = pytester.runpytest_subprocess(".", "--hmmfuzz-kernel", "7.2", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*fixed? update the hmmfuzz-expect line*"])
