"""C reproducers on the real kernel: compiled on the host, run in the guest by the runner.
They pass where the kernel does what the model allows, fail (exit 1, naming the step and the
value) where it does not, and bring down the kernel the way the finding did."""

from __future__ import annotations

import json

import pytest

from fuzz.cli import main
from fuzz.reproducer import render, run_in_guest, selftest_name
from harness.csource import selftest
from harness.kernel import resolve_kernel
from harness.prog import parse_program
from harness.vm.session import KernelSession

from conftest import CORPUS
from test_csource import KSELFTEST, load

pytestmark = pytest.mark.vm
PROGRAMS = sorted(CORPUS.glob("*.txt"))
DO_READ_OOPS = CORPUS / "regressions" / "test_hmm_dmirror_do_read_oops.txt"

# FLAGS exists from 6.16 on (the 7.2 model); 6.12's driver answers EINVAL
FAIL_ALLOC_THEN_MIGRATE = """
region a pages=4
p0 map a[0:4]
p0 write a[0:4] seed=7
p0 open d0 dmirror0
p0 flags d0 1
p0 migrate_to_dev d0 a[0:4]
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    with KernelSession(resolve_kernel("7.2", log=print), tmp_path_factory.mktemp("vm")) as session:
        yield session


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_the_reproducer_of_each_corpus_program_passes_where_the_model_agrees(guest, path):
    run = run_in_guest(guest, render(load(path), guest.hello.release))
    assert run.status == 0, run.execution.output
    assert run.execution.output.rstrip().endswith("PASS: every check held")


@pytest.mark.parametrize("name", ["hmm_tests_anon_read", "hmm_tests_exclusive_cow"])
def test_the_selftest_form_passes_in_the_kselftest_harness(guest, name, tmp_path):
    from fuzz.reproducer import expected_per_op

    program = load(CORPUS / f"{name}.txt")
    source = selftest(program, expected_per_op(program, guest.hello.release), selftest_name(name))
    (tmp_path / "kselftest_harness.h").write_text((KSELFTEST / "kselftest_harness.h").read_text())
    (tmp_path / "kselftest.h").write_text((KSELFTEST / "kselftest.h").read_text())
    run = run_in_guest(guest, source, include=tmp_path)
    assert run.status == 0, run.execution.output
    assert f"ok 1 hmm.{selftest_name(name)}" in run.execution.output


def test_checks_fail_loudly_when_the_kernel_does_something_else(tmp_path_factory):
    """7.2's expectations on 6.12, which has no FLAGS ioctl: the reproducer names the step,
    the errno the kernel gave and what was expected, and exits 1."""
    program = parse_program(FAIL_ALLOC_THEN_MIGRATE)
    with KernelSession(resolve_kernel("6.12", log=print), tmp_path_factory.mktemp("vm612")) as old:
        run = run_in_guest(old, render(program, "7.2.13"))
    assert run.status == 1
    assert "step 3 (p0 flags d0 1): errno = EINVAL, expected 0" in run.execution.output
    assert run.execution.output.rstrip().endswith(
        "FAIL: 6 check(s) failed: the kernel did not do what the model allows")


def test_a_crash_reproducer_oopses_the_same_way_and_the_guest_comes_back(guest):
    run = run_in_guest(guest, render(load(DO_READ_OOPS), guest.hello.release))
    assert run.status == 3
    assert run.reproduces("crash: BUG: unable to handle page fault in dmirror_do_read")
    assert run.last_step == "step 5: p0 dev_read d0 a[0:4]"
    after = run_in_guest(guest, render(load(PROGRAMS[0]), guest.hello.release))
    assert after.status == 0, after.execution.output


def test_minimize_writes_a_c_reproducer_and_a_selftest_that_reproduce(tmp_path, capsys):
    """The end of the maintainer's path: a noisy crashing program minimized to the ops that
    matter, written as C, and the C run once in the guest shows the same oops."""
    noisy = DO_READ_OOPS.read_text().replace(
        "p0 open d0 dmirror0",
        "region b pages=2\np0 map b[0:2]\np0 write b[0:2] seed=3\np0 open d0 dmirror0\np0 read b[0:2]")
    finding = tmp_path / "finding"
    finding.mkdir()
    (finding / "program.txt").write_text(noisy)
    (finding / "finding.json").write_text(json.dumps({"signature": "crash", "hits": 1}))
    with pytest.raises(SystemExit) as ended:
        main(["minimize", str(finding), "--kernel", "7.2", "--workdir", str(tmp_path / "work")])
    assert ended.value.code == 3
    meta = json.loads((finding / "finding.json").read_text())["minimized"]
    assert meta["ops_after"] < meta["ops_before"]
    assert meta["c_reproduces"] is True
    assert (finding / meta["c_reproducer"]).read_text().startswith("/*")
    assert "TEST_F(hmm, hmmfuzz_crash_bug_unable_to_handle_page_fault_in_dmirror_do_read)" in \
        (finding / meta["selftest"]).read_text()
