"""Programs as C: a standalone reproducer a maintainer can compile with gcc and run as root
on the kernel under test, and a TEST_F for tools/testing/selftests/mm/hmm-tests.c.

The kernel side knows how each op becomes a syscall or an ioctl; what the op should report
comes from the caller as `Expected` values per op (the fuzzing front end asks the reference
model), so this room stays free of the model. A step whose op has no Expected is run but not
checked.
"""

from __future__ import annotations

import errno as errno_names
from dataclasses import dataclass
from pathlib import Path

from harness.prog import Content, Page, Program, format_op, format_program
from harness.prog.content import recognise
from harness.runner.wire import Numbering  # processes and fds numbered as the runner does
from harness.prog.ops import (
    CheckExclusive, ClearSoftDirty, CloseDevice, Compact, CpuRead, CpuWrite, DevRead, DevWrite,
    Exclusive, Exit, Flags, Fork, KsmMerge, Madvise, Map, MapKind, Mbind, MigrateToDev,
    MigrateToSys, Mlock, MovePages, Mprotect, Mremap, Munlock, Munmap, Op, OpenDevice, Pagemap,
    Prot, Release, Smaps, Snapshot, Switch, Thp, UffdRegister, UffdUnregister, UffdWriteprotect,
)

HERE = Path(__file__).parent
UAPI_HEADER = HERE.parent / "prog" / "test_hmm_uapi.h"
KERNEL_OPS_HEADER = HERE.parent / "runner" / "kernel_ops.h"  # what the runner runs, verbatim


class NotRenderable(Exception):
    """The program has an op the C form does not express yet."""


@dataclass(frozen=True)
class Expected:
    """What one op may report, as C checks: each scalar one of the values listed (cpages or
    faults None: the ioctl copies nothing back); `pages` the per-page outcome (None: not
    checked, e.g. when several outcomes are allowed); `snapshot` the SNAPSHOT bytes."""

    errno: tuple[int, ...] = (0,)
    cpages: tuple[int | None, ...] = (None,)
    faults: tuple[int | None, ...] = (None,)
    pages: tuple[Page, ...] | None = None
    snapshot: bytes | None = None


# ---------------------------------------------------------------------- op -> C call

_DEVICE_REQUEST = {
    DevRead: "HMM_DMIRROR_READ", DevWrite: "HMM_DMIRROR_WRITE", Snapshot: "HMM_DMIRROR_SNAPSHOT",
    Exclusive: "HMM_DMIRROR_EXCLUSIVE", CheckExclusive: "HMM_DMIRROR_CHECK_EXCLUSIVE",
    MigrateToDev: "HMM_DMIRROR_MIGRATE_TO_DEV", MigrateToSys: "HMM_DMIRROR_MIGRATE_TO_SYS",
}
_PROT = {Prot.NONE: "PROT_NONE", Prot.R: "PROT_READ", Prot.RW: "PROT_READ | PROT_WRITE"}
_BACKING = {MapKind.ANON: "ANON", MapKind.SHARED: "SHARED", MapKind.MEMFD: "MEMFD",
            MapKind.FILE: "FILE_PRIVATE"}


def _address(program: Program, op) -> str:
    region = program.regions[op.range.region]
    return _region_address(region.slot, op.range.start)


def _region_address(slot: int, page: int) -> str:
    return f"REGION({slot}) + {page} * PAGE_SIZE" if page else f"REGION({slot})"


def _length(npages: int) -> str:
    return f"{npages} * PAGE_SIZE"


# Ops whose C call is `function(address, npages, extra...)`
_RANGE_CALLS = {
    CpuWrite: ("cpu_write", lambda op: [op.seed]),
    CpuRead: ("cpu_read", lambda op: []),
    Pagemap: ("show_pagemap", lambda op: []),
    Smaps: ("show_smaps", lambda op: []),
    MovePages: ("numa_move", lambda op: [-1 if op.node is None else op.node]),
    Mbind: ("numa_bind", lambda op: [op.node]),
}


def call(program: Program, op: Op, names: Numbering) -> str:
    """The C statement that performs `op` and leaves what it reported in `result`."""
    if type(op) in _RANGE_CALLS:
        function, extra = _RANGE_CALLS[type(op)]
        arguments = [_address(program, op), op.range.npages, *extra(op)]
        return f"{function}({', '.join(map(str, arguments))});"
    if isinstance(op, Map):
        slot = program.regions[op.range.region].slot
        return f"map({_address(program, op)}, {op.range.npages}, {_BACKING[op.kind]}, {slot});"
    if isinstance(op, (Munmap, Mlock, Munlock)):
        function = type(op).__name__.lower()
        return f"begin(); syscall_done({function}((void *)({_address(program, op)}), {_length(op.range.npages)}));"
    if isinstance(op, Mprotect):
        return (f"begin(); syscall_done(mprotect((void *)({_address(program, op)}), "
                f"{_length(op.range.npages)}, {_PROT[op.prot]}));")
    if isinstance(op, Madvise):
        return (f"begin(); syscall_done(madvise((void *)({_address(program, op)}), "
                f"{_length(op.range.npages)}, MADV_{op.advice.name}));")
    if isinstance(op, Mremap):
        old = f"(void *)({_address(program, op)}), {_length(op.range.npages)}, {_length(op.new_npages)}"
        if op.to is None:
            return f"begin(); syscall_done((long)mremap({old}, 0));"
        flags = "MREMAP_MAYMOVE | MREMAP_FIXED" + (" | MREMAP_DONTUNMAP" if op.dontunmap else "")
        to = program.regions[op.to.region]
        return (f"begin(); syscall_done((long)mremap({old}, {flags}, "
                f"(void *)({_region_address(to.slot, op.to.start)})));")
    if isinstance(op, Thp):
        return f'thp("{op.enabled.value}", "{op.defrag.value}");'
    if isinstance(op, Compact):
        return 'knob("/proc/sys/vm/compact_memory", "1");'
    if isinstance(op, ClearSoftDirty):
        return 'knob("/proc/self/clear_refs", "4");'
    if isinstance(op, (UffdRegister, UffdUnregister, UffdWriteprotect)):
        request = ("UFFD_REGISTER_WP" if isinstance(op, UffdRegister) else "UFFD_UNREGISTER"
                   if isinstance(op, UffdUnregister) else
                   "UFFD_PROTECT" if op.protect is Switch.ON else "UFFD_UNPROTECT")
        return f"userfault({request}, {_address(program, op)}, {op.range.npages});"
    if isinstance(op, KsmMerge):
        return "ksm();"
    if isinstance(op, OpenDevice):
        return f"device_open({names.fd(op.fd)}, {int(op.device.removeprefix('dmirror'))});"
    if isinstance(op, CloseDevice):
        return f"device_close({names.fd(op.fd)});"
    if isinstance(op, Release):
        # the ioctl checks the command's range before RELEASE ignores it
        return f"dmirror({names.fd(op.fd)}, HMM_DMIRROR_RELEASE, REGION(0), 1, 0);"
    if isinstance(op, Flags):
        return f"dmirror({names.fd(op.fd)}, HMM_DMIRROR_FLAGS, REGION(0), {op.flags:#x}, 0);"
    request = _DEVICE_REQUEST.get(type(op))
    if request is not None:
        seed = op.seed if isinstance(op, DevWrite) else 0
        return f"dmirror({names.fd(op.fd)}, {request}, {_address(program, op)}, {op.range.npages}, {seed});"
    raise NotRenderable(f"the C form does not express `{op.keyword}` yet")


# ---------------------------------------------------------------------- expected -> C checks

def _errno_name(value: int) -> str:
    return errno_names.errorcode.get(value, str(value)) if value else "0"


def _scalar(name: str, values: tuple) -> str:
    listed = ", ".join("-1" if v is None else _errno_name(v) if name == "errno" else str(v)
                       for v in values)
    field = "err" if name == "errno" else name
    return f'CHECK(expect(STEP, LINE, "{name}", result.{field}, ONE_OF({listed})));'


def _runs(items: list, same_run) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive items that belong together."""
    runs, start = [], 0
    for index in range(1, len(items) + 1):
        if index == len(items) or not same_run(items[index - 1], items[index]):
            runs.append((start, index))
            start = index
    return runs


def _over(start: int, end: int, body: str) -> str:
    """`body` (with `{page}` where the page index goes) for each page of [start, end)."""
    if end - start == 1:
        return body.format(page=start, offset=0)
    return (f"for (unsigned long page = {start}; page < {end}; page++) "
            + body.format(page="page", offset=f"(page - {start})" if start else "page"))


def _page_checks(op: Op, pages: tuple[Page, ...]) -> list[str]:
    lines = []
    signals = [p.signal for p in pages]
    if isinstance(op, CpuWrite) or any(signals):
        for start, end in _runs(signals, lambda a, b: a == b):
            lines.append(_over(start, end, f"CHECK(expect_signal(STEP, LINE, {{page}}, {signals[start]}));"))
    contents: list[Content | None] = [
        None if p.signal or p.crc is None else recognise(p.crc, p.first_word) for p in pages]
    for start, end in _runs(contents, _continues):
        if pages[start].signal or pages[start].crc is None:
            continue
        first = contents[start]
        if first is None:
            lines.append(f"/* pages {start}..{end - 1}: bytes hmmfuzz cannot name; not checked */")
        elif first.is_zero:
            lines.append(_over(start, end, "CHECK(expect_page(STEP, LINE, {page}, 0, 0));"))
        else:
            lines.append(_over(start, end, f"CHECK(expect_page(STEP, LINE, {{page}}, {first.seed}, "
                                           f"{first.vpn:#x} + {{offset}}));"))
    return lines


def _continues(a: Content | None, b: Content | None) -> bool:
    if a is None or b is None:
        return False
    if a.is_zero or b.is_zero:
        return a.is_zero and b.is_zero
    return a.seed == b.seed and b.vpn == a.vpn + 1


def _snapshot_checks(snapshot: bytes) -> list[str]:
    return [f"CHECK(expect_snapshot(STEP, LINE, {start}, {end}, {snapshot[start]:#04x}));"
            for start, end in _runs(list(snapshot), lambda a, b: a == b)]


def checks(op: Op, expected: Expected | None) -> list[str]:
    if expected is None:
        return ["/* not checked: the model does not state what this op reports */"]
    lines = [_scalar("errno", expected.errno)]
    if type(op) in _DEVICE_REQUEST or isinstance(op, (Release, Flags)):
        lines += [_scalar("cpages", expected.cpages), _scalar("faults", expected.faults)]
    if expected.pages is not None and expected.pages:
        lines += _page_checks(op, expected.pages)
    if expected.snapshot is not None:
        lines += _snapshot_checks(expected.snapshot)
    return lines


# ---------------------------------------------------------------------- the whole file

PRELUDE = HERE / "prelude.c"
STEPS_MARK = "/* @@STEPS@@ */"


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _step_body(index: int, program: Program, op: Op, names: Numbering, expected: Expected | None,
               indent: str) -> str:
    """The op's call and checks, with STEP and LINE in scope for the checks."""
    head = [] if expected is None else [f"enum {{ STEP = {index} }};",
                                        f"const char *LINE = {_c_string(format_op(op))};", ""]
    statements = head + [call(program, op, names)] + checks(op, expected)
    return "\n".join(f"{indent}{line}" if line else "" for line in statements)


def _step_function(index: int, program: Program, op: Op, names: Numbering,
                   expected: Expected | None) -> str:
    body = _step_body(index, program, op, names, expected, "\t")
    return f"/* {program.where(index)}: {format_op(op)} */\nstatic void step_{index}(void)\n{{\n{body}\n}}\n"


def _table_row(index: int, op: Op, names: Numbering) -> str:
    proc = names.proc(op.proc)
    text = _c_string(format_op(op))
    if isinstance(op, Fork):
        return f"\t{{ FORK, {proc}, {names.proc(op.child)}, NULL, {text} }},"
    if isinstance(op, Exit):
        return f"\t{{ EXIT, {proc}, 0, NULL, {text} }},"
    return f"\t{{ RUN, {proc}, 0, step_{index}, {text} }},"


def _backing_tables(program: Program) -> str:
    memfd, file, pages = [0] * 16, [0] * 16, [0] * 16
    for region in program.regions.values():
        pages[region.slot] = region.pages
    for op in program.ops:
        if isinstance(op, Map) and op.kind in (MapKind.MEMFD, MapKind.FILE):
            table = memfd if op.kind is MapKind.MEMFD else file
            table[program.regions[op.range.region].slot] = 1
    as_c = lambda values: "{ " + ", ".join(map(str, values)) + " }"  # noqa: E731
    return (f"static const int memfd_slots[MAX_REGIONS] = {as_c(memfd)};\n"
            f"static const int file_slots[MAX_REGIONS] = {as_c(file)};\n"
            f"static const unsigned long region_pages[MAX_REGIONS] = {as_c(pages)};\n")


def _uapi() -> str:
    return "/* lib/test_hmm_uapi.h */\n" + UAPI_HEADER.read_text()


def _padded(program: Program, expected: list[Expected | None]) -> list[Expected | None]:
    for op in program.ops:  # fail early, before any C is written
        if not isinstance(op, (Fork, Exit)):
            call(program, op, Numbering())
    return list(expected) + [None] * (len(program.ops) - len(expected))


def _steps(program: Program, expected: list[Expected | None]) -> str:
    """One function per op and the table that says which process runs which step."""
    names = Numbering()
    functions = [_step_function(index, program, op, names, expected[index])
                 for index, op in enumerate(program.ops) if not isinstance(op, (Fork, Exit))]
    names = Numbering()
    rows = []
    for index, op in enumerate(program.ops):
        names.proc(op.proc)
        rows.append(_table_row(index, op, names))
    return ("\n".join(functions) + "\nstatic const struct step steps[] = {\n" + "\n".join(rows)
            + "\n};\nstatic const int nsteps = sizeof(steps) / sizeof(steps[0]);\n")


def _prelude(steps: str, check: str, processes: bool = True) -> str:
    """The helpers, then `steps`, then (with `processes`) the machinery that runs each step
    in its process."""
    text = (PRELUDE.read_text().replace("/* @@UAPI@@ */", _uapi())
            .replace("/* @@KERNEL_OPS@@ */", "/* harness/runner/kernel_ops.h */\n" + KERNEL_OPS_HEADER.read_text()))
    helpers, machinery = text.split(STEPS_MARK)
    return (f"#define CHECK(expected) {check}\n" + helpers + steps
            + (machinery if processes else ""))


def reproducer(program: Program, expected: list[Expected | None], title: str = "") -> str:
    """A standalone C program: runs the ops in the processes the program names, checks each
    op against `expected`, prints what went wrong, exits 1 if anything did (0 otherwise)."""
    expected = _padded(program, expected)
    steps = _steps(program, expected) + "\n" + _backing_tables(program)
    main = "\nint main(void)\n{\n\treturn run_program(memfd_slots, file_slots, region_pages);\n}\n"
    return (_banner(program, title, "gcc -O2 -static -o repro repro.c && ./repro",
                    "It prints each step, then every check that failed, and exits 1 if any did.")
            + _prelude(steps, "((void)(expected))") + main)


def selftest(program: Program, expected: list[Expected | None], name: str, title: str = "") -> str:
    """A kselftest in the style of hmm-tests.c: TEST_F(hmm, <name>) asserting what each op
    should report. A one-process program reads top to bottom; a program with forks runs its
    steps through the same per-process machinery as the reproducer and asserts it passed."""
    expected = _padded(program, expected)
    single = all(op.proc == "p0" and not isinstance(op, (Fork, Exit)) for op in program.ops)
    if single:
        steps, body = "", _inline_body(program, expected)
        check = "ASSERT_TRUE(expected)"
    else:
        steps = _steps(program, expected)
        body = "\tASSERT_EQ(run_program(memfd_slots, file_slots, region_pages), 0);"
        check = "((void)(expected))"
    steps += "\n" + _backing_tables(program)
    fixture = ("\nFIXTURE(hmm) {\n\tint unused;\n};\n\nFIXTURE_SETUP(hmm)\n{\n}\n\n"
               "FIXTURE_TEARDOWN(hmm)\n{\n}\n")
    test = (f"\nTEST_F(hmm, {name})\n{{\n\tprepare(memfd_slots, file_slots, region_pages);\n\n"
            f"{body}\n}}\n\nTEST_HARNESS_MAIN\n")
    return (_banner(program, title, "gcc -O2 -static -I tools/testing/selftests -o t t.c && ./t",
                    "A kselftest (kselftest_harness.h): TEST_F(hmm, ...) fails on the first op\n"
                    " * that does not report what it should.")
            + '#include "kselftest_harness.h"\n' + _prelude(steps, check, not single) + fixture + test)


def _inline_body(program: Program, expected: list[Expected | None]) -> str:
    names, blocks = Numbering(), []
    for index, op in enumerate(program.ops):
        body = _step_body(index, program, op, names, expected[index], "\t\t")
        blocks.append(f"\t/* {program.where(index)}: {format_op(op)} */\n\t{{\n{body}\n\t}}")
    return "\n".join(blocks)


def _banner(program: Program, title: str, build: str, what: str) -> str:
    listing = "\n".join(f" *   {line}" if line else " *" for line in format_program(program).splitlines())
    head = f" * {title}\n *\n" if title else ""
    return (f"/*\n{head} * Written by hmmfuzz from the program below. Build and run as root on the\n"
            f" * kernel under test:\n *   {build}\n * {what}\n *\n{listing}\n */\n")
