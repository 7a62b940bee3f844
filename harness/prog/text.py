"""The canonical text form of programs: `format(parse(text)) == text` for canonical text.

    # hmm-tests.c anon_read: the device reads what the CPU wrote
    region a pages=16
    p0 map a[0:16]
    p0 write a[0:16] seed=1
    p0 open d0 dmirror0
    p0 dev_read d0 a[0:16]   # every page faulted in once: faults=1

Ops beyond v1 (the reference model does not judge them yet):

    p0 map b[0:4] shared          # or memfd, file; anonymous private is written without a kind
    p0 migrate_to_dev d0 a[0:4]   # also migrate_to_sys <fd> <range>
    p0 release d0                 # HMM_DMIRROR_RELEASE
    p0 flags d0 1                 # HMM_DMIRROR_FLAGS (1: FAIL_ALLOC)
    p0 madvise a[0:4] pageout     # dontneed, free, cold, willneed, collapse, ...
    p0 mremap a[0:4] 8            # resize in place
    p0 mremap a[0:4] b[0:4] dontunmap   # move to b[0:4] (MREMAP_FIXED), dontunmap optional
    p0 mlock a[0:4]               # and munlock
    p0 pagemap a[0:4]             # observe /proc/self/pagemap, kpagecount, kpageflags
    p1 close d0
    p1 exit                       # later lines may not name p1
    p0 thp always defer+madvise   # THP enabled and defrag modes (each program starts never/madvise)
    p0 compact                    # /proc/sys/vm/compact_memory
    p0 clear_soft_dirty           # 4 > /proc/<pid>/clear_refs
    p0 move_pages a[0:4] 1        # move_pages(2) to node 1; without a node: where are they
    p0 mbind a[0:4] 1             # MPOL_BIND to node 1, MPOL_MF_MOVE
    p0 uffd_register a[0:4]       # userfaultfd, UFFDIO_REGISTER_MODE_WP (and uffd_unregister)
    p0 uffd_wp a[0:4] on          # UFFDIO_WRITEPROTECT on|off
    p0 ksm_merge                  # KSM full scans, then stopped
    p0 smaps a[0:4]               # observe /proc/<pid>/smaps of the VMAs there

One statement per line; `#` starts a comment. Every error names the file, the line and what
was expected there. Parsing also checks the program is meaningful (regions declared before
use, ranges inside their region, processes and fds that exist), so everything downstream can
trust a Program.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from enum import Enum

from .ops import (
    DEVICES, MAX_FLAGS, MAX_NODE, MAX_PROCESSES, MAX_REGION_PAGES,
    MAX_REGIONS, MAX_SEED, OP_BY_KEYWORD, Advice, Blank, CloseDevice, Comment, Exit, Fork,
    Located, Map, MapKind, MovePages, Mremap, Op, OpenDevice, PageRange, Program, Prot, Region,
    Switch, ThpDefrag, ThpEnabled,
)

# Enum-valued fields and how a message names what they take
ENUM_FIELDS: dict[str, tuple[type[Enum], str]] = {
    "Prot": (Prot, "a protection"),
    "Advice": (Advice, "an advice"),
    "ThpEnabled": (ThpEnabled, "a THP mode"),
    "ThpDefrag": (ThpDefrag, "a THP defrag mode"),
    "Switch": (Switch, "a switch"),
}

NAME = re.compile(r"[a-z][a-z0-9_]{0,15}\Z")
PROC = re.compile(r"p[0-9]\Z")
# Numbers are ASCII and at most 9 digits: bigger ones are never valid here, and bounding
# them keeps int() away from arbitrarily long digit strings a mutator may produce.
NUMBER = r"([0-9]{1,9})"
RANGE = re.compile(rf"([a-z][a-z0-9_]{{0,15}})\[{NUMBER}:{NUMBER}\]\Z")
SEED = re.compile(rf"seed={NUMBER}\Z")
PAGES = re.compile(rf"pages={NUMBER}\Z")
COUNT = re.compile(rf"{NUMBER}\Z")
MAP_KINDS = tuple(kind.value for kind in MapKind if kind is not MapKind.ANON)
DONTUNMAP = "dontunmap"


class ParseError(ValueError):
    def __init__(self, source: str, line: int, message: str):
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


def _op_fields(kind: type[Op]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(kind) if f.name != "proc"]


def _usage(kind: type[Op]) -> str:
    if kind is Map:
        return "`<proc> map <range>` or `<proc> map <range> <kind>`"
    if kind is Mremap:
        return ("`<proc> mremap <range> <new_npages>` or "
                "`<proc> mremap <range> <to_range> [dontunmap]`")
    if kind is MovePages:
        return "`<proc> move_pages <range>` or `<proc> move_pages <range> <node>`"
    words = [f"<{f.name}>" if f.name != "seed" else "seed=<n>" for f in _op_fields(kind)]
    return "`" + " ".join(["<proc>", kind.keyword, *words]) + "`"


# ---------------------------------------------------------------- formatting

def _format_value(value) -> str:
    if isinstance(value, Enum):
        return value.value
    return str(value)


def format_op(op: Op) -> str:
    words = [op.proc, op.keyword]
    if isinstance(op, Map):
        words.append(str(op.range))
        if op.kind is not MapKind.ANON:
            words.append(op.kind.value)
        return " ".join(words)
    if isinstance(op, Mremap):
        words += [str(op.range), str(op.to) if op.to is not None else str(op.new_npages)]
        if op.dontunmap:
            words.append(DONTUNMAP)
        return " ".join(words)
    if isinstance(op, MovePages):
        words.append(str(op.range))
        if op.node is not None:
            words.append(str(op.node))
        return " ".join(words)
    for f in _op_fields(type(op)):
        value = getattr(op, f.name)
        words.append(f"seed={value}" if f.name == "seed" else _format_value(value))
    return " ".join(words)


def format_statement(statement) -> str:
    match statement:
        case Region(name, pages, _):
            return f"region {name} pages={pages}"
        case Located(op, _, comment):
            text = format_op(op)
            if comment is None:
                return text
            return f"{text}  # {comment}" if comment else f"{text}  #"
        case Comment(text):
            return f"# {text}" if text else "#"
        case Blank():
            return ""
    raise TypeError(f"not a statement: {statement!r}")


def format_program(program: Program) -> str:
    return "".join(format_statement(s) + "\n" for s in program.statements)


# ---------------------------------------------------------------- parsing

class _Scope:
    """What exists at a point of the program: regions, live processes, fds per process."""

    def __init__(self):
        self.regions: dict[str, Region] = {}
        self.fds: dict[str, set[str]] = {"p0": set()}  # live processes
        self.exited: set[str] = set()


class _LineParser:
    def __init__(self, source: str, line: int, scope: _Scope):
        self.source, self.line, self.scope = source, line, scope

    def fail(self, message: str):
        raise ParseError(self.source, self.line, message)

    def region(self, words: list[str]) -> Region:
        if len(words) != 3 or not PAGES.match(words[2]):
            self.fail("expected `region <name> pages=<n>`")
        name = words[1]
        if not NAME.match(name):
            self.fail(f"region name {name!r}: expected a lower-case identifier")
        if name in self.scope.regions:
            self.fail(f"region {name!r} is declared twice")
        if len(self.scope.regions) >= MAX_REGIONS:
            self.fail(f"at most {MAX_REGIONS} regions")
        pages = int(PAGES.match(words[2]).group(1))
        if not 1 <= pages <= MAX_REGION_PAGES:
            self.fail(f"pages={pages}: expected 1..{MAX_REGION_PAGES}")
        region = Region(name, pages, slot=len(self.scope.regions))
        self.scope.regions[name] = region
        return region

    def op(self, words: list[str]) -> Op:
        proc, keyword, args = words[0], words[1] if len(words) > 1 else "", words[2:]
        kind = OP_BY_KEYWORD.get(keyword)
        if kind is None:
            self.fail(f"unknown op {keyword!r}: expected one of {', '.join(OP_BY_KEYWORD)}")
        if not PROC.match(proc):
            self.fail(f"{proc!r}: expected a line to start with `region` or a process name "
                      f"(p0..p9) followed by an op")
        if proc not in self.scope.fds:
            live = ", ".join(self.scope.fds) or "none"
            if proc in self.scope.exited:
                self.fail(f"process {proc!r} has exited above (live: {live})")
            self.fail(f"process {proc!r} does not exist here (live: {live})")
        if kind is Map:
            op = self.map(proc, args)
        elif kind is Mremap:
            op = self.mremap(proc, args)
        elif kind is MovePages:
            if len(args) not in (1, 2):
                self.fail(f"expected {_usage(MovePages)}")
            node = self.node(args[1]) if len(args) == 2 else None
            op = MovePages(proc, self.page_range(args[0]), node)
        else:
            fields = _op_fields(kind)
            if len(args) != len(fields):
                self.fail(f"expected {_usage(kind)}")
            values = {f.name: self.value(f, word, proc) for f, word in zip(fields, args)}
            op = kind(proc=proc, **values)
        self.apply(op)
        return op

    def map(self, proc: str, args: list[str]) -> Map:
        if len(args) not in (1, 2):
            self.fail(f"expected {_usage(Map)}")
        page_range = self.page_range(args[0])
        if len(args) == 1:
            return Map(proc, page_range)
        word = args[1]
        if word == MapKind.ANON.value:
            self.fail(f"{word!r}: anonymous private is the default, written without a kind: "
                      f"`<proc> map <range>`")
        if word not in MAP_KINDS:
            self.fail(f"{word!r}: expected a mapping kind, one of {', '.join(MAP_KINDS)}, "
                      f"in {_usage(Map)}")
        return Map(proc, page_range, MapKind(word))

    def mremap(self, proc: str, args: list[str]) -> Mremap:
        if len(args) not in (2, 3):
            self.fail(f"expected {_usage(Mremap)}")
        page_range = self.page_range(args[0])
        dontunmap = len(args) == 3
        if dontunmap and args[2] != DONTUNMAP:
            self.fail(f"{args[2]!r}: expected `dontunmap` or nothing after the destination "
                      f"range")
        count = COUNT.match(args[1])
        if count is None:
            to = self.page_range(args[1])
            return Mremap(proc, page_range, to.npages, to, dontunmap)
        if dontunmap:
            self.fail("dontunmap needs a destination range: "
                      "`<proc> mremap <range> <to_range> dontunmap`")
        new_npages = int(count.group(1))
        pages = self.scope.regions[page_range.region].pages
        if not 1 <= new_npages <= pages - page_range.start:
            self.fail(f"{new_npages}: expected a new size of 1..{pages - page_range.start} "
                      f"pages (an in-place resize stays inside {page_range.region})")
        return Mremap(proc, page_range, new_npages)

    def value(self, f: dataclasses.Field, word: str, proc: str):
        if f.name == "seed":
            match = SEED.match(word)
            if not match or not 1 <= int(match.group(1)) <= MAX_SEED:
                self.fail(f"{word!r}: expected seed=<1..{MAX_SEED}>")
            return int(match.group(1))
        if f.type == "PageRange":
            return self.page_range(word)
        if f.type in ENUM_FIELDS:
            enum, what = ENUM_FIELDS[f.type]
            try:
                return enum(word)
            except ValueError:
                self.fail(f"{word!r}: expected {what}, one of "
                          f"{', '.join(member.value for member in enum)}")
        if f.name == "node":
            return self.node(word)
        if f.name == "flags":
            match = COUNT.match(word)
            if not match or int(match.group(1)) > MAX_FLAGS:
                self.fail(f"{word!r}: expected flags as a number 0..{MAX_FLAGS}")
            return int(match.group(1))
        if f.name == "device":
            if word not in DEVICES:
                self.fail(f"{word!r}: expected a device, one of "
                          f"{', '.join(DEVICES)}")
            return word
        if f.name == "child":
            if not PROC.match(word):
                self.fail(f"{word!r}: expected a process name p0..p9")
            return word
        if f.name == "fd":
            if not NAME.match(word):
                self.fail(f"{word!r}: expected an fd name (lower-case identifier)")
            return word
        raise AssertionError(f"no parser for field {f.name}")

    def node(self, word: str) -> int:
        match = COUNT.match(word)
        if not match or int(match.group(1)) > MAX_NODE:
            self.fail(f"{word!r}: expected a NUMA node 0..{MAX_NODE}")
        return int(match.group(1))

    def page_range(self, word: str) -> PageRange:
        match = RANGE.match(word)
        if not match:
            self.fail(f"{word!r}: expected a page range <region>[<start>:<end>]")
        name, start, end = match.group(1), int(match.group(2)), int(match.group(3))
        region = self.scope.regions.get(name)
        if region is None:
            self.fail(f"region {name!r} is not declared above")
        if not 0 <= start < end <= region.pages:
            self.fail(f"{word}: expected 0 <= start < end <= {region.pages} (pages of {name})")
        return PageRange(name, start, end)

    def apply(self, op: Op):
        """Track processes and fds so later lines can be checked against them."""
        fds = self.scope.fds
        if isinstance(op, Fork):
            if op.child in fds:
                self.fail(f"process {op.child!r} already exists")
            if op.child in self.scope.exited:
                self.fail(f"process {op.child!r} has exited above; a name is not reused")
            if len(fds) + len(self.scope.exited) >= MAX_PROCESSES:
                self.fail(f"at most {MAX_PROCESSES} processes (exited ones count)")
            fds[op.child] = set(fds[op.proc])  # the child inherits the fd table
        elif isinstance(op, Exit):
            del fds[op.proc]
            self.scope.exited.add(op.proc)
        elif isinstance(op, OpenDevice):
            if op.fd in fds[op.proc]:
                self.fail(f"fd {op.fd!r} is already open in {op.proc}")
            fds[op.proc].add(op.fd)
        elif hasattr(op, "fd") and op.fd not in fds[op.proc]:
            self.fail(f"fd {op.fd!r} is not open in {op.proc}")
        elif isinstance(op, CloseDevice):
            fds[op.proc].remove(op.fd)


def _split_comment(line: str) -> tuple[str, str | None]:
    code, hash_, comment = line.partition("#")
    if not hash_:
        return line, None
    return code, comment[1:] if comment.startswith(" ") else comment


def parse_program(text: str, source: str = "<program>") -> Program:
    scope = _Scope()
    statements = []
    # Only "\n" ends a line (str.splitlines() would also split on form feeds and other
    # separators, and line numbers would stop matching what an editor shows).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        code, comment = _split_comment(raw)
        words = code.split()
        parser = _LineParser(source, number, scope)
        if not words:
            statements.append(Comment(comment) if comment is not None else Blank())
        elif words[0] == "region":
            if comment is not None:
                parser.fail("put the comment for a region on the line above it")
            statements.append(parser.region(words))
        else:
            statements.append(Located(parser.op(words), line=number, comment=comment))
    if not any(isinstance(s, Located) for s in statements):
        raise ParseError(source, max(1, len(statements)), "the program has no ops")
    return Program(tuple(statements), source=source)


def load_program(path: str | Path) -> Program:
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise ParseError(str(path), line, f"not UTF-8 text ({error.reason} at byte "
                                          f"{error.start})") from None
    return parse_program(text, source=str(path))
