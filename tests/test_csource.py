"""Programs as C: every program hmmfuzz can run becomes a reproducer and a TEST_F that gcc
compiles cleanly, and the checks in them say what the model says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.reproducer import expected_per_op, selftest_name
from fuzz.strategies import programs
from harness.csource import Expected, reproducer, selftest
from harness.prog import parse_program

from conftest import CORPUS, REPO

KSELFTEST = REPO / "tests" / "data" / "kselftest"
PROGRAMS = sorted(CORPUS.glob("*.txt")) + sorted((CORPUS / "regressions").glob("*.txt"))


def compiles(source: str, tmp_path: Path) -> str:
    """gcc's complaints (warnings are errors); '' when it compiled. (Linking is left to the
    VM tests, which run what they build.)"""
    c_file = tmp_path / "x.c"
    c_file.write_text(source)
    done = subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-c", "-I", str(KSELFTEST),
                           "-o", str(tmp_path / "x.o"), str(c_file)], capture_output=True, text=True)
    return done.stderr if done.returncode else ""


def load(path: Path):
    return parse_program(path.read_text(), str(path))


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_each_corpus_program_compiles_as_reproducer_and_selftest(path, tmp_path):
    program = load(path)
    expected = expected_per_op(program, "7.2.13")
    assert compiles(reproducer(program, expected, path.stem), tmp_path) == ""
    assert compiles(selftest(program, expected, selftest_name(path.stem)), tmp_path) == ""


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(comments=False, extended=True))
def test_random_programs_of_every_op_compile(program):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        expected = expected_per_op(program, "7.2.13")
        assert compiles(reproducer(program, expected), Path(tmp)) == ""


def test_a_device_read_checks_counts_and_the_pattern_each_page_should_hold():
    program = parse_program("""
region a pages=2
p0 map a[0:2]
p0 write a[0:2] seed=5
p0 open d0 dmirror0
p0 dev_read d0 a[0:2]
""")
    source = reproducer(program, expected_per_op(program, "7.2.13"))
    read = source.split("static void step_3(void)")[1].split("}\n")[0]
    assert "dmirror(0, HMM_DMIRROR_READ, REGION(0), 2, 0);" in read
    assert 'expect(STEP, LINE, "cpages", result.cpages, ONE_OF(2))' in read
    assert 'expect(STEP, LINE, "faults", result.faults, ONE_OF(1))' in read
    # the device reads the pattern the CPU wrote: seed 5 at the region's first page on
    vpn = 0x2000_0000_0000 >> 12
    assert f"expect_page(STEP, LINE, page, 5, {vpn:#x} + page)" in read


def test_a_failing_ioctl_is_expected_to_fail_with_its_errno_and_report_nothing():
    program = parse_program("""
region a pages=1
p0 open d0 dmirror0
p0 dev_read d0 a[0:1]
""")
    source = reproducer(program, expected_per_op(program, "7.2.13"))
    read = source.split("static void step_1(void)")[1].split("}\n")[0]
    assert 'ONE_OF(EFAULT)' in read
    assert 'expect(STEP, LINE, "cpages", result.cpages, ONE_OF(-1))' in read


def test_the_model_allowing_several_outcomes_becomes_one_of_and_unchecked_pages():
    program = parse_program("region a pages=1\np0 map a[0:1]\np0 read a[0:1]\n")
    choices = [Expected(errno=(0,)), Expected(errno=(0, 12), pages=None)]
    source = reproducer(program, choices)
    read = source.split("static void step_1(void)")[1].split("}\n")[0]
    assert "ONE_OF(0, ENOMEM)" in read
    assert "expect_page" not in read


def test_ops_after_what_the_model_states_are_run_but_not_checked():
    program = parse_program("region a pages=1\np0 map a[0:1]\np0 mlock a[0:1]\n")
    source = reproducer(program, [Expected()])
    step = source.split("static void step_1(void)")[1].split("}\n")[0]
    assert "mlock" in step and "not checked" in step and "CHECK" not in step


def test_a_one_process_test_reads_top_to_bottom_and_a_forked_one_uses_the_process_steps():
    single = load(CORPUS / "hmm_tests_anon_read.txt")
    forked = load(CORPUS / "hmm_tests_anon_write_child.txt")
    one = selftest(single, expected_per_op(single, "7.2.13"), "hmmfuzz_anon_read")
    two = selftest(forked, expected_per_op(forked, "7.2.13"), "hmmfuzz_anon_write_child")
    assert "TEST_F(hmm, hmmfuzz_anon_read)" in one and "run_program" not in one.split("TEST_F")[1]
    assert "ASSERT_EQ(run_program(memfd_slots, file_slots, region_pages), 0);" in two
