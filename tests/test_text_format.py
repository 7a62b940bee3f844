"""The text form of programs: generated programs round-trip, and every parse error names
the line it is about and says what was expected there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from fuzz.strategies import MAX_OPS, programs
from harness.prog import (
    MAX_PROCESSES, DevRead, DevWrite, Fork, Located, ParseError, Program, Region,
    format_program, load_program, parse_program,
)
from harness.prog.ops import (
    MAX_FLAGS, MAX_NODE, MAX_SEED, OP_KINDS, V1_OP_KINDS, Advice, ClearSoftDirty, CloseDevice,
    Comment, Compact, Exit, Flags, KsmMerge, Map, MapKind, Mbind, MovePages, Mremap, OpenDevice,
    PageRange, Smaps, Switch, Thp, ThpDefrag, ThpEnabled, UffdWriteprotect,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# For `find`: only generate (shrinking the example found is slow and not the point).
REACHES = settings(max_examples=5000, phases=[Phase.generate], database=None,
                   suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- round trips

@SETTINGS
@given(programs())
def test_parse_of_format_is_the_program(program):
    text = format_program(program)
    assert parse_program(text) == program


@SETTINGS
@given(programs(extended=True))
def test_parse_of_format_is_the_program_for_the_whole_op_set(program):
    text = format_program(program)
    assert parse_program(text) == program


@SETTINGS
@given(programs())
def test_format_is_canonical(program):
    text = format_program(program)
    assert format_program(parse_program(text)) == text


@SETTINGS
@given(programs(extended=True))
def test_format_is_canonical_for_the_whole_op_set(program):
    text = format_program(program)
    assert format_program(parse_program(text)) == text


@SETTINGS
@given(programs())
def test_default_programs_use_only_v1_ops(program):
    # the reference model judges v1 ops only: the default generator must not draw others
    assert all(type(op) in V1_OP_KINDS for op in program.ops)
    assert all(op.kind is MapKind.ANON for op in program.ops if isinstance(op, Map))


@SETTINGS
@given(programs(extended=True))
def test_extended_programs_never_name_an_exited_process(program):
    exited = set()
    for op in program.ops:
        assert op.proc not in exited
        if isinstance(op, Exit):
            exited.add(op.proc)
    forks = sum(op.keyword == "fork" for op in program.ops)
    assert forks + 1 <= MAX_PROCESSES


@pytest.mark.parametrize("keyword", sorted({k.keyword for k in OP_KINDS} - {k.keyword for k in V1_OP_KINDS}))
def test_extended_generator_reaches_every_new_op(keyword):
    found = find(programs(extended=True), lambda p: any(op.keyword == keyword for op in p.ops),
                 settings=REACHES)
    assert parse_program(format_program(found)) == found


@pytest.mark.parametrize("kind", [k for k in MapKind if k is not MapKind.ANON])
def test_extended_generator_reaches_every_mapping_kind(kind):
    find(programs(extended=True),
         lambda p: any(isinstance(op, Map) and op.kind is kind for op in p.ops),
         settings=REACHES)


def test_extended_generator_reaches_a_dontunmap_move():
    find(programs(extended=True),
         lambda p: any(isinstance(op, Mremap) and op.dontunmap for op in p.ops),
         settings=REACHES)


@SETTINGS
@given(programs(extended=True))
def test_parsed_ops_know_their_lines_and_comments_for_the_whole_op_set(program):
    text = format_program(program)
    lines = text.splitlines()
    parsed = parse_program(text, source="gen.txt")
    for original, located in zip(program.located_ops, parsed.located_ops, strict=True):
        assert located.comment == original.comment
        assert lines[located.line - 1].startswith(f"{located.op.proc} {located.op.keyword}")


@SETTINGS
@given(programs())
def test_parsed_ops_know_their_lines_and_comments(program):
    # Located.line and Located.comment do not take part in equality, so check them here.
    text = format_program(program)
    lines = text.splitlines()
    parsed = parse_program(text, source="gen.txt")
    assert len(parsed.located_ops) == len(program.located_ops)
    for original, located in zip(program.located_ops, parsed.located_ops):
        assert located.comment == original.comment
        assert lines[located.line - 1].startswith(f"{located.op.proc} {located.op.keyword}")
    assert [s for s in parsed.statements if isinstance(s, Comment)] == [
        s for s in program.statements if isinstance(s, Comment)]


@SETTINGS
@given(programs())
def test_generated_programs_respect_the_generator_bounds(program):
    assert 1 <= len(program.regions) <= 3
    assert 1 <= len(program.ops) <= MAX_OPS
    processes = {"p0"} | {op.child for op in program.ops if isinstance(op, Fork)}
    assert len(processes) <= MAX_PROCESSES


@SETTINGS
@given(programs(comments=False))
def test_programs_without_comments_have_only_regions_and_ops(program):
    assert all(isinstance(s, (Region, Located)) for s in program.statements)


def _child_uses_inherited_fd(program: Program) -> bool:
    opened_by: dict[str, str] = {}
    for op in program.ops:
        if isinstance(op, OpenDevice):
            opened_by[op.fd] = op.proc
        elif hasattr(op, "fd") and opened_by.get(op.fd) not in (None, op.proc):
            return True
    return False


def test_generator_reaches_a_child_using_an_inherited_fd():
    found = find(programs(), _child_uses_inherited_fd, settings=REACHES)
    assert parse_program(format_program(found)) == found


def test_generator_reaches_the_process_limit():
    def four_processes(program):
        return sum(isinstance(op, Fork) for op in program.ops) == MAX_PROCESSES - 1

    find(programs(), four_processes, settings=REACHES)


def test_generator_overlaps_ranges():
    def overlapping_cpu_and_device(program):
        cpu = [op.range for op in program.ops if op.keyword == "write"]
        dev = [op.range for op in program.ops if isinstance(op, (DevRead, DevWrite))]
        return any(c.region == d.region and c.start < d.end and d.start < c.end
                   for c in cpu for d in dev)

    find(programs(), overlapping_cpu_and_device, settings=REACHES)


# ---------------------------------------------------------------- example programs

ANON_READ = """\
# hmm-tests.c anon_read: the device reads what the CPU wrote
region a pages=16
p0 map a[0:16]
p0 write a[0:16] seed=1
p0 open d0 dmirror0
p0 dev_read d0 a[0:16]  # faults == 1
"""


def test_example_is_canonical():
    program = parse_program(ANON_READ)
    assert format_program(program) == ANON_READ
    assert [op.keyword for op in program.ops] == ["map", "write", "open", "dev_read"]
    assert program.located_ops[-1].line == 6
    assert program.located_ops[-1].comment == "faults == 1"


# ---------------------------------------------------------------- errors

# Every bad program below starts with this prelude, so the bad line is line 5 (or later):
# a comment and a blank line first make sure line numbers count every line.
PRELUDE = """\
# prelude
region a pages=16

p0 map a[0:16]
"""
BAD_LINE = 5


def parse_error(text: str, source: str = "bad.txt") -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_program(text, source=source)
    return caught.value


def assert_error(text: str, line: int, *expected: str) -> ParseError:
    error = parse_error(text)
    assert error.line == line, str(error)
    assert error.source == "bad.txt"
    assert str(error).startswith(f"bad.txt:{line}: ")
    for fragment in expected:
        assert fragment in error.message, error.message
    return error


def test_unknown_op():
    error = assert_error(PRELUDE + "p0 mmap a[0:1]\n", BAD_LINE, "unknown op 'mmap'", "expected")
    # The message lists what would have been accepted.
    for keyword in ("map", "munmap", "mprotect", "write", "read", "fork", "open", "dev_read",
                    "dev_write", "snapshot", "exclusive", "check_exclusive"):
        assert re.search(rf"\b{keyword}\b", error.message)


@pytest.mark.parametrize("line, usage", [
    ("p0 map a[0:1] a[1:2]", "`<proc> map <range>`"),
    ("p0 map", "`<proc> map <range>`"),
    ("p0 mprotect a[0:1]", "`<proc> mprotect <range> <prot>`"),
    ("p0 write a[0:1]", "`<proc> write <range> seed=<n>`"),
    ("p0 fork", "`<proc> fork <child>`"),
    ("p0 open d0", "`<proc> open <fd> <device>`"),
    ("p0 open d0 dmirror0\np0 dev_write d0 a[0:1]", "`<proc> dev_write <fd> <range> seed=<n>`"),
])
def test_wrong_argument_count_shows_usage(line, usage):
    bad = BAD_LINE + line.count("\n")
    assert_error(PRELUDE + line + "\n", bad, "expected", usage)


@pytest.mark.parametrize("word", ["a[0:17]", "a[16:16]", "a[3:2]", "a[16:17]"])
def test_range_outside_region(word):
    assert_error(PRELUDE + f"p0 read {word}\n", BAD_LINE,
                 word, "expected 0 <= start < end <= 16", "pages of a")


@pytest.mark.parametrize("word", ["a[0]", "a[0:1", "a(0:1)", "a[-1:1]", "A[0:1]"])
def test_malformed_range(word):
    assert_error(PRELUDE + f"p0 read {word}\n", BAD_LINE, "expected a page range")


def test_undeclared_region():
    assert_error(PRELUDE + "p0 read b[0:1]\n", BAD_LINE, "region 'b' is not declared above")


def test_region_must_be_declared_above_its_use():
    text = PRELUDE + "p0 read b[0:1]\nregion b pages=4\n"
    assert_error(text, BAD_LINE, "region 'b' is not declared above")


def test_unknown_process():
    assert_error(PRELUDE + "p1 read a[0:1]\n", BAD_LINE,
                 "process 'p1' does not exist here", "live: p0")


def test_fd_not_open():
    assert_error(PRELUDE + "p0 dev_read d0 a[0:1]\n", BAD_LINE, "fd 'd0' is not open in p0")


def test_fd_opened_twice():
    text = PRELUDE + "p0 open d0 dmirror0\np0 open d0 dmirror1\n"
    assert_error(text, BAD_LINE + 1, "fd 'd0' is already open in p0")


def test_fork_to_existing_process():
    text = PRELUDE + "p0 fork p1\np1 fork p1\n"
    assert_error(text, BAD_LINE + 1, "process 'p1' already exists")
    assert_error(PRELUDE + "p0 fork p0\n", BAD_LINE, "process 'p0' already exists")


def test_fork_to_bad_process_name():
    assert_error(PRELUDE + "p0 fork child\n", BAD_LINE, "'child'", "expected a process name")


def test_too_many_processes():
    forks = "".join(f"p0 fork p{i}\n" for i in range(1, MAX_PROCESSES))
    text = PRELUDE + forks + f"p0 fork p{MAX_PROCESSES}\n"
    assert_error(text, BAD_LINE + MAX_PROCESSES - 1, f"at most {MAX_PROCESSES} processes")
    # One fewer fork is fine.
    parse_program(PRELUDE + forks)


@pytest.mark.parametrize("word", ["seed=0", f"seed={MAX_SEED + 1}", "seed=x", "seed=",
                                  "seed=-1", "1", "seeds=1"])
def test_bad_seed(word):
    assert_error(PRELUDE + f"p0 write a[0:1] {word}\n", BAD_LINE,
                 repr(word), f"expected seed=<1..{MAX_SEED}>")


def test_bad_seed_on_dev_write():
    text = PRELUDE + "p0 open d0 dmirror0\np0 dev_write d0 a[0:1] seed=0\n"
    assert_error(text, BAD_LINE + 1, "'seed=0'", f"expected seed=<1..{MAX_SEED}>")


@pytest.mark.parametrize("word", ["rx", "w", "RW", "read", "PROT_READ"])
def test_bad_prot(word):
    assert_error(PRELUDE + f"p0 mprotect a[0:1] {word}\n", BAD_LINE,
                 repr(word), "expected a protection, one of none, r, rw")


def test_bad_device():
    assert_error(PRELUDE + "p0 open d0 dmirror4\n", BAD_LINE,
                 "'dmirror4'", "expected a device, one of dmirror0, dmirror1, dmirror2, dmirror3")


def test_duplicate_region():
    assert_error(PRELUDE + "region a pages=4\n", BAD_LINE, "region 'a' is declared twice")


@pytest.mark.parametrize("line, expected", [
    ("region b", "expected `region <name> pages=<n>`"),
    ("region b pages=0", "pages=0: expected 1..8192"),
    ("region b pages=8193", "pages=8193: expected 1..8192"),
    ("region B pages=1", "expected a lower-case identifier"),
    ("region b pages=1  # why", "put the comment for a region on the line above it"),
])
def test_bad_region(line, expected):
    assert_error(PRELUDE + line + "\n", BAD_LINE, expected)


def test_program_without_ops():
    assert_error("# nothing\nregion a pages=1\n", 2, "the program has no ops")
    assert_error("", 1, "the program has no ops")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("# caf\u00e9\nregion a pages=1\np0 map a[0:1]\n".encode("latin-1"))
    with pytest.raises(ParseError) as caught:
        load_program(path)
    assert caught.value.line == 1
    assert caught.value.source == str(path)
    assert "not UTF-8 text" in caught.value.message
    assert str(caught.value).startswith(f"{path}:1: ")


def test_non_utf8_byte_later_in_the_file_names_its_line(tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"region a pages=1\np0 map a[0:1]\n# caf\xe9\n")
    with pytest.raises(ParseError) as caught:
        load_program(path)
    assert caught.value.line == 3


def test_huge_number_is_a_parse_error():
    parse_error(PRELUDE + "p0 write a[0:1] seed=" + "1" * 5000 + "\n")


def test_load_program_reads_a_file(tmp_path):
    path = tmp_path / "anon_read.txt"
    path.write_text(ANON_READ)
    program = load_program(path)
    assert program.source == str(path)
    assert format_program(program) == ANON_READ
    assert program.where(3) == f"{path}:6"


# ---------------------------------------------------------------- fd inheritance

def test_child_can_use_an_fd_inherited_from_its_parent():
    text = PRELUDE + "p0 open d0 dmirror0\np0 fork p1\np1 dev_read d0 a[0:16]\n"
    program = parse_program(text)
    assert program.ops[-1] == DevRead("p1", "d0", program.ops[0].range)


def test_grandchild_inherits_through_the_chain():
    text = PRELUDE + "p0 open d0 dmirror0\np0 fork p1\np1 fork p2\np2 snapshot d0 a[0:1]\n"
    parse_program(text)


def test_parent_cannot_use_an_fd_the_child_opened():
    text = PRELUDE + "p0 fork p1\np1 open d1 dmirror1\np1 dev_read d1 a[0:1]\n" \
        "p0 dev_read d1 a[0:1]\n"
    assert_error(text, BAD_LINE + 3, "fd 'd1' is not open in p0")


def test_child_does_not_get_fds_opened_after_the_fork():
    text = PRELUDE + "p0 fork p1\np0 open d0 dmirror0\np1 dev_read d0 a[0:1]\n"
    assert_error(text, BAD_LINE + 2, "fd 'd0' is not open in p1")


def test_sibling_does_not_see_a_sibling_fd():
    text = PRELUDE + "p0 fork p1\np0 fork p2\np1 open d0 dmirror0\np2 exclusive d0 a[0:1]\n"
    assert_error(text, BAD_LINE + 3, "fd 'd0' is not open in p2")


def test_child_can_open_its_own_fd_beside_an_inherited_one():
    text = PRELUDE + "p0 open fd dmirror0\np0 fork p1\np1 open child_fd dmirror0\n" \
        "p1 dev_write child_fd a[0:1] seed=2\np1 dev_write fd a[0:1] seed=3\n"
    program = parse_program(text)
    assert isinstance(program.ops[-1], DevWrite)
    # ... but not reuse the inherited name.
    text = PRELUDE + "p0 open fd dmirror0\np0 fork p1\np1 open fd dmirror0\n"
    assert_error(text, BAD_LINE + 2, "fd 'fd' is already open in p1")


# ---------------------------------------------------------------- the ops beyond v1

WHOLE_OP_SET = """\
region a pages=16
region b pages=16
p0 map a[0:16]
p0 map b[0:4] shared
p0 map b[4:8] memfd
p0 map b[8:12] file
p0 open d0 dmirror0
p0 migrate_to_dev d0 a[0:4]
p0 migrate_to_sys d0 a[0:4]
p0 release d0
p0 flags d0 1
p0 madvise a[0:4] dontneed
p0 madvise a[0:16] populate_write
p0 mremap a[0:4] 8
p0 mremap a[0:4] b[12:16] dontunmap
p0 mremap b[12:16] a[8:10]
p0 mlock a[4:8]
p0 munlock a[4:8]
p0 pagemap a[0:16]
p0 fork p1
p1 close d0
p1 open d0 dmirror1
p1 exit
p0 close d0
"""


def test_whole_op_set_example_is_canonical():
    program = parse_program(WHOLE_OP_SET)
    assert format_program(program) == WHOLE_OP_SET
    ops = program.ops
    assert ops[0] == Map("p0", PageRange("a", 0, 16))  # the default kind is not written
    assert [op.kind for op in ops[1:4]] == [MapKind.SHARED, MapKind.MEMFD, MapKind.FILE]
    assert ops[11] == Mremap("p0", PageRange("a", 0, 4), 8)
    assert ops[12] == Mremap("p0", PageRange("a", 0, 4), 4, PageRange("b", 12, 16), True)
    assert ops[13].new_npages == 2 and not ops[13].dontunmap
    assert ops[8] == Flags("p0", "d0", 1)
    assert ops[-1] == CloseDevice("p0", "d0")


@pytest.mark.parametrize("advice", [a.value for a in Advice])
def test_every_advice_round_trips(advice):
    text = PRELUDE + f"p0 madvise a[0:16] {advice}\n"
    assert format_program(parse_program(text)) == text


@pytest.mark.parametrize("line, expected", [
    ("p0 map a[0:1] anon", ["'anon'", "default", "`<proc> map <range>`"]),
    ("p0 map a[0:1] private", ["'private'", "expected a mapping kind, one of shared, memfd, file"]),
    ("p0 map a[0:1] shared memfd", ["`<proc> map <range>` or `<proc> map <range> <kind>`"]),
    ("p0 madvise a[0:1]", ["`<proc> madvise <range> <advice>`"]),
    ("p0 madvise a[0:1] DONTNEED", ["'DONTNEED'", "expected an advice", "dontneed", "collapse"]),
    ("p0 madvise a[0:1] remove", ["'remove'", "expected an advice"]),
    ("p0 mremap a[0:4]", ["`<proc> mremap <range> <new_npages>`"]),
    ("p0 mremap a[0:4] 0", ["0: expected a new size of 1..16"]),
    ("p0 mremap a[2:4] 15", ["15: expected a new size of 1..14", "inside a"]),
    ("p0 mremap a[0:4] 4 dontunmap", ["dontunmap needs a destination range"]),
    ("p0 mremap a[0:4] a[8:12] unmap", ["'unmap'", "expected `dontunmap`"]),
    ("p0 mremap a[0:4] c[0:4]", ["region 'c' is not declared above"]),
    ("p0 mremap a[0:4] x", ["'x': expected a page range"]),
    ("p0 mlock a[0:17]", ["expected 0 <= start < end <= 16"]),
    ("p0 pagemap", ["`<proc> pagemap <range>`"]),
    ("p0 exit now", ["`<proc> exit`"]),
    ("p0 release d0", ["fd 'd0' is not open in p0"]),
    ("p0 close d0", ["fd 'd0' is not open in p0"]),
    ("p0 migrate_to_dev d0 a[0:1]", ["fd 'd0' is not open in p0"]),
    ("p0 open d0 dmirror0\np0 flags d0", ["`<proc> flags <fd> <flags>`"]),
    ("p0 open d0 dmirror0\np0 flags d0 x", ["'x'", f"expected flags as a number 0..{MAX_FLAGS}"]),
    ("p0 open d0 dmirror0\np0 flags d0 65536", ["'65536'", "expected flags"]),
    ("p0 open d0 dmirror0\np0 migrate_to_sys d0", ["`<proc> migrate_to_sys <fd> <range>`"]),
])
def test_errors_of_the_new_ops(line, expected):
    assert_error(PRELUDE + line + "\n", BAD_LINE + line.count("\n"), *expected)


def test_an_exited_process_cannot_run_ops():
    text = PRELUDE + "p0 fork p1\np1 exit\np1 read a[0:1]\n"
    assert_error(text, BAD_LINE + 2, "process 'p1' has exited above", "live: p0")


def test_an_exited_name_is_not_reused_and_still_counts():
    text = PRELUDE + "p0 fork p1\np1 exit\np0 fork p1\n"
    assert_error(text, BAD_LINE + 2, "process 'p1' has exited above; a name is not reused")
    forks = "".join(f"p0 fork p{i}\np{i} exit\n" for i in range(1, MAX_PROCESSES))
    text = PRELUDE + forks + f"p0 fork p{MAX_PROCESSES}\n"
    assert_error(text, BAD_LINE + 2 * (MAX_PROCESSES - 1), f"at most {MAX_PROCESSES} processes")


def test_the_last_process_may_exit_and_nothing_runs_after():
    program = parse_program(PRELUDE + "p0 exit\n")
    assert program.ops[-1] == Exit("p0")
    assert_error(PRELUDE + "p0 exit\np0 read a[0:1]\n", BAD_LINE + 1,
                 "process 'p0' has exited above (live: none)")


def test_a_closed_fd_is_gone_and_may_be_opened_again():
    text = PRELUDE + "p0 open d0 dmirror0\np0 close d0\np0 dev_read d0 a[0:1]\n"
    assert_error(text, BAD_LINE + 2, "fd 'd0' is not open in p0")
    text = PRELUDE + "p0 open d0 dmirror0\np0 close d0\np0 open d0 dmirror1\n" \
        "p0 release d0\n"
    parse_program(text)


def test_close_in_a_child_leaves_the_parent_fd():
    text = PRELUDE + "p0 open d0 dmirror0\np0 fork p1\np1 close d0\np0 snapshot d0 a[0:1]\n" \
        "p1 snapshot d0 a[0:1]\n"
    assert_error(text, BAD_LINE + 4, "fd 'd0' is not open in p1")


def test_mremap_vocabulary_keeps_its_invariants():
    with pytest.raises(ValueError):
        Mremap("p0", PageRange("a", 0, 4), 3, PageRange("a", 8, 12))
    with pytest.raises(ValueError):
        Mremap("p0", PageRange("a", 0, 4), 4, None, True)


# ---------------------------------------------------------------- kernel-wide ops

KERNEL_OPS = """\
region a pages=16
p0 map a[0:16]
p0 thp always defer+madvise
p0 thp never never
p0 compact
p0 clear_soft_dirty
p0 move_pages a[0:4] 1
p0 move_pages a[0:4]
p0 mbind a[0:16] 0
p0 uffd_register a[0:8]
p0 uffd_wp a[0:4] on
p0 uffd_wp a[0:4] off
p0 uffd_unregister a[0:8]
p0 ksm_merge
p0 smaps a[0:16]
"""


def test_kernel_ops_example_is_canonical():
    program = parse_program(KERNEL_OPS)
    assert format_program(program) == KERNEL_OPS
    ops = program.ops
    assert ops[1] == Thp("p0", ThpEnabled.ALWAYS, ThpDefrag.DEFER_MADVISE)
    assert ops[5] == MovePages("p0", PageRange("a", 0, 4), 1)
    assert ops[6] == MovePages("p0", PageRange("a", 0, 4))  # no node: only ask where
    assert ops[7] == Mbind("p0", PageRange("a", 0, 16), 0)
    assert ops[9] == UffdWriteprotect("p0", PageRange("a", 0, 4), Switch.ON)
    assert [type(op) for op in ops[3:5]] == [Compact, ClearSoftDirty]
    assert isinstance(ops[12], KsmMerge) and ops[13] == Smaps("p0", PageRange("a", 0, 16))


@pytest.mark.parametrize("enabled", [mode.value for mode in ThpEnabled])
@pytest.mark.parametrize("defrag", [mode.value for mode in ThpDefrag])
def test_every_thp_mode_round_trips(enabled, defrag):
    text = PRELUDE + f"p0 thp {enabled} {defrag}\n"
    assert format_program(parse_program(text)) == text


@pytest.mark.parametrize("line, expected", [
    ("p0 thp always", ["`<proc> thp <enabled> <defrag>`"]),
    ("p0 thp sometimes never", ["'sometimes'", "expected a THP mode, one of always, madvise, never"]),
    ("p0 thp always defer-madvise", ["'defer-madvise'", "expected a THP defrag mode",
                                      "defer+madvise"]),
    ("p0 compact now", ["`<proc> compact`"]),
    ("p0 clear_soft_dirty a[0:1]", ["`<proc> clear_soft_dirty`"]),
    ("p0 move_pages a[0:1] 4", ["'4'", f"expected a NUMA node 0..{MAX_NODE}"]),
    ("p0 move_pages a[0:1] 1 2", ["`<proc> move_pages <range>` or `<proc> move_pages <range> <node>`"]),
    ("p0 move_pages", ["`<proc> move_pages <range>`"]),
    ("p0 mbind a[0:1]", ["`<proc> mbind <range> <node>`"]),
    ("p0 mbind a[0:1] x", ["'x'", "expected a NUMA node"]),
    ("p0 uffd_wp a[0:1]", ["`<proc> uffd_wp <range> <protect>`"]),
    ("p0 uffd_wp a[0:1] yes", ["'yes'", "expected a switch, one of on, off"]),
    ("p0 uffd_register a[0:17]", ["expected 0 <= start < end <= 16"]),
    ("p0 ksm_merge a[0:1]", ["`<proc> ksm_merge`"]),
    ("p0 smaps b[0:1]", ["region 'b' is not declared above"]),
])
def test_errors_of_the_kernel_ops(line, expected):
    assert_error(PRELUDE + line + "\n", BAD_LINE, *expected)


OPS_SEEDS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "ops").glob("*.txt"))


@pytest.mark.parametrize("path", OPS_SEEDS, ids=[p.stem for p in OPS_SEEDS])
def test_each_ops_seed_is_canonical_and_says_what_it_is_about(path):
    text = path.read_text()
    assert format_program(load_program(path)) == text
    assert text.startswith("# ")
