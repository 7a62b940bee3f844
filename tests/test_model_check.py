"""How check() reports: per field, continuing after a divergence, partial traces."""

from test_model_support import (
    EFAULT, assert_accepts, cpu, dev, err, ok, pattern, patterns, program, snap, trace,
    wrote, zeros,
)

from harness.prog import Ending, OpResult, Trace
from reference import Verdict, check, expected, uapi

PROG = """
    region a pages=2
    p0 map a[0:2]
    p0 write a[0:2] seed=1
    p0 open d0 dmirror0
    p0 dev_read d0 a[0:2]
    p0 dev_read d0 a[0:2]
    p0 read a[0:2]
"""


def good(prog):
    data = patterns(prog, 1, "a", 0, 2)
    return [ok(), wrote(2), ok(), dev(2, 1, data), dev(2, 0, data), cpu(*data)]


def test_the_check_continues_after_a_divergence():
    prog = program(PROG)
    results = good(prog)
    results[3] = dev(2, 0, results[3].pages)                              # wrong faults
    results[5] = cpu(pattern(prog, 1, "a", 0), pattern(prog, 9, "a", 1))  # wrong data
    verdict = check(prog, trace(*results))
    assert not verdict.ok
    assert [(d.op_index, d.field) for d in verdict.divergences] == [(3, "faults"), (5, "pages[1]")]
    assert verdict.describe(4) == "ok"
    assert verdict.checked == 6


def test_a_divergence_names_the_line_the_op_the_values_and_the_kernel_function():
    prog = program(PROG)
    results = good(prog)
    results[4] = dev(2, 1, results[4].pages)
    (div,) = check(prog, trace(*results)).divergences
    assert div.where == "t.prog:6"
    assert div.op == "p0 dev_read d0 a[0:2]"
    assert (div.field, div.allowed, div.observed) == ("faults", ("0",), "1")
    assert "dmirror_read" in div.reason
    assert str(div).startswith("t.prog:6: p0 dev_read d0 a[0:2]: faults: observed 1, "
                               "allowed only 0 (")


def test_page_divergences_describe_the_bytes():
    prog = program(PROG)
    results = good(prog)
    results[5] = cpu(pattern(prog, 1, "a", 0), zeros(1)[0])
    (div,) = check(prog, trace(*results)).divergences
    assert div.field == "pages[1]"
    assert div.observed == "zero"
    assert div.allowed == ("pattern(seed=1, vpn=0x200000001)",)


def test_snapshot_divergences_name_the_protection_bytes():
    prog = program("""
        region a pages=1
        p0 map a[0:1]
        p0 open d0 dmirror0
        p0 snapshot d0 a[0:1]
    """)
    (div,) = check(prog, trace(ok(), ok(), snap(uapi.PROT_ERROR))).divergences
    assert (div.field, div.allowed, div.observed) == ("snapshot[0]", ("0x00 (NONE)",),
                                                       "0xff (ERROR)")


def test_a_trace_cut_short_by_a_crash_checks_only_the_ops_that_ran():
    prog = program(PROG)
    cut = Trace(kernel_release="7.2.13", results=tuple(good(prog)[:3]), ending=Ending.CRASHED)
    verdict = check(prog, cut)
    assert verdict.ok and verdict.checked == 3
    assert verdict.describe(4) == "unchecked"


def test_every_field_is_compared_exactly():
    prog = program(PROG)
    results = good(prog)
    results[0] = OpResult(cpages=0)
    verdict = check(prog, trace(*results))
    assert [(d.field, d.allowed, d.observed) for d in verdict.divergences] == [
        ("cpages", ("not reported",), "0")]


def test_profile_and_expected_helper():
    prog = program(PROG)
    assert isinstance(assert_accepts(prog, *good(prog)), Verdict)
    assert check(prog, trace(*good(prog))).profile == "newest"
    assert check(prog, trace(*good(prog), release="6.12.117")).profile == "6.12"
    predicted = expected(prog)
    assert [len(p) for p in predicted] == [1] * 6
    assert predicted[3][0].as_result() == good(prog)[3]


def test_a_fifty_op_program_agrees_with_what_the_model_expects_of_it():
    # (how fast the check is lives in benchmarks/check_cost.py, measured against VM runs)
    lines = ["region a pages=16", "region b pages=16", "p0 map a[0:16]", "p0 open d0 dmirror0",
             "p0 open d1 dmirror1"]
    body = ["p0 write a[0:8] seed=3", "p0 dev_read d0 a[0:16]", "p0 mprotect a[4:8] r",
            "p0 snapshot d1 a[0:16]", "p0 exclusive d0 a[8:12]", "p0 read a[6:10]",
            "p0 check_exclusive d0 a[0:16]", "p0 mprotect a[4:8] rw",
            "p0 dev_write d1 a[0:16] seed=4"]
    lines += body * 5
    prog = program("\n".join(lines))
    results = [e[0].as_result() for e in expected(prog)]
    verdict = check(prog, trace(*results))
    assert verdict.ok, str(verdict)
    assert verdict.checked == len(prog.ops)


def test_a_failed_ioctl_reports_nothing_but_its_errno():
    prog = program("""
        region a pages=1
        p0 open d0 dmirror0
        p0 dev_read d0 a[0:1]
    """)
    assert_accepts(prog, ok(), err(EFAULT))
    verdict = check(prog, trace(ok(), OpResult(errno=EFAULT, cpages=0, faults=0)))
    assert {d.field for d in verdict.divergences} == {"cpages", "faults"}
