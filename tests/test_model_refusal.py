"""Honest refusal: an op the model does not model ends the check there, without a crash and
without a verdict on it or on anything after it."""

from test_model_support import cpu, ok, pattern, program, trace, wrote

from fuzz.judge import Status, judge
from harness.prog import OpResult
from reference import Simulation, check, expected

PROG = """
    region a pages=3
    p0 map a[0:2] file
    p0 write a[0:2] seed=1
    p0 mbind a[0:2] 1
    p0 read a[0:1]
"""


def test_an_unmodelled_op_stops_the_check_there_and_says_which():
    prog = program(PROG)
    verdict = check(prog, trace(ok(), wrote(2), ok(), cpu(pattern(prog, 1, "a", 0))))
    assert verdict.ok
    assert verdict.unmodelled_from == 2
    assert verdict.unmodelled_op == "mbind of a private file mapping"
    assert verdict.unmodelled == "mbind of a private file mapping is not modelled"
    assert verdict.checked == 2
    assert verdict.describe(1) == "ok"
    assert verdict.describe(2) == "unchecked: mbind of a private file mapping is not modelled"
    assert verdict.describe(3) == "unchecked"
    assert "op 2 and later unchecked: mbind of a private file mapping is not modelled" in str(verdict)


def test_nothing_after_the_unmodelled_op_is_judged_even_a_wrong_value():
    prog = program(PROG)
    verdict = check(prog, trace(ok(), wrote(2), OpResult(errno=22), cpu()))
    assert verdict.ok and verdict.unmodelled_from == 2


def test_divergences_before_the_unmodelled_op_are_still_reported():
    prog = program(PROG)
    verdict = check(prog, trace(ok(), wrote(1), ok(), cpu()))
    assert not verdict.ok and verdict.unmodelled_from == 2
    assert {d.op_index for d in verdict.divergences} == {1}


def test_a_fully_modelled_program_has_no_unmodelled_op():
    prog = program("region a pages=1\np0 map a[0:1]\n")
    verdict = check(prog, trace(ok()))
    assert verdict.unmodelled_from is None and verdict.unmodelled is None


def test_a_case_of_a_modelled_op_can_be_refused_by_name():
    prog = program("""
        region a pages=2
        p0 map a[0:2] file
        p0 mbind a[0:2] 1
    """)
    assert check(prog, trace(ok(), ok())).unmodelled_op == "mbind of a private file mapping"
    prog = program("region a pages=1\np0 map a[0:1] file\np0 madvise a[0:1] collapse\n")
    assert check(prog, trace(ok(), ok())).unmodelled_op == \
        "madvise collapse of a shmem or file mapping"


def test_expected_stops_before_the_unmodelled_op():
    assert len(expected(program(PROG))) == 2


def test_the_verdict_lines_say_unchecked_and_the_status_is_not_a_divergence():
    prog = program(PROG)
    verdict = judge(prog, trace(ok(), wrote(2), ok(), cpu(pattern(prog, 1, "a", 0))))
    assert verdict.status is Status.OK
    lines = verdict.lines()
    assert lines[2].endswith("unchecked: mbind of a private file mapping is not modelled")
    assert lines[3].endswith("unchecked") and "not modelled" not in lines[3]


# The model run forward without a kernel (reference.Simulation): what the generator asks
# before it adds an op, so that generated programs are checked to their end.

EXCLUSIVE_THEN_COMPACT = """
    region a pages=4
    p0 map a[0:4]
    p0 open d0 dmirror0
    p0 write a[0:4] seed=1
    p0 exclusive d0 a[0:4]
"""


def test_a_simulation_refuses_what_the_check_would_refuse_and_stays_where_it_was():
    prog = program(EXCLUSIVE_THEN_COMPACT)
    simulation = Simulation(prog)
    assert simulation.refused is None and len(simulation.allowed) == 4
    compact = program("region a pages=4\np0 compact\n").ops[0]
    assert not simulation.admits(compact)
    assert simulation.refused == "compact with more than 3 device-exclusive entries"
    assert simulation.program.ops == prog.ops
    read = program("region a pages=4\np0 read a[0:4]\n").ops[0]
    assert simulation.admits(read)
    # what it allows for the read is what the model allows for the program read as a whole
    assert simulation.allowed == expected(prog.with_ops(prog.ops + (read,)))


def test_a_simulation_of_a_program_stops_at_its_first_refused_op():
    simulation = Simulation(program(PROG))
    assert simulation.refused == "mbind of a private file mapping"
    assert len(simulation.program.ops) == len(simulation.allowed) == 2


def test_turning_thp_on_later_replays_the_simulation_with_page_tables_followed():
    prog = program("region a pages=512\np0 map a[0:512]\np0 write a[0:1] seed=1\n")
    simulation = Simulation(prog)
    thp_on = program("region a pages=1\np0 thp madvise never\n").ops[0]
    assert simulation.admits(thp_on)
    assert simulation.places.thp_programmed
    assert simulation.allowed == expected(prog.with_ops(prog.ops + (thp_on,)))
