"""Hypothesis strategies for programs of the v1 op vocabulary (and, with `extended=True`,
of the whole op set: migration, release, flags, exit, close, madvise, mapping kinds, mremap,
mlock/munlock, pagemap, THP modes, compaction, soft-dirty clearing, NUMA migration,
userfaultfd write-protection, KSM merging and smaps).

Programs are built as `harness.prog.Program` objects (Region, Located, Comment and Blank
statements), never as text, and are valid by construction: every region is declared before
a range names it, every range lies inside its region, every fd is open in the process that
uses it (a child inherits the fds its parent had open when it forked, and nothing opened
later), and no more than MAX_PROCESSES processes exist. So `format_program` of a generated
program always parses back to the same program.

The interesting kernel behaviour is in how ops on the *same* pages interact (a CPU write
after a device read, an mprotect between an exclusive and a check_exclusive, a fork in
between), so ranges are drawn mostly from a small window of "hot" pages per region, and
a region is mostly mapped whole where it is declared, so that later ops find memory there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from harness.prog.ops import (
    DEVICES, MAX_FLAGS, MAX_NODE, MAX_PROCESSES, MAX_REGION_PAGES, MAX_SEED,
    Advice, Blank, CheckExclusive, ClearSoftDirty, CloseDevice, Comment, Compact, CpuRead,
    CpuWrite, DevRead, DevWrite, Exclusive, Exit, Flags, Fork, KsmMerge, Located, Madvise, Map,
    MapKind, Mbind, MigrateToDev, MigrateToSys, Mlock, MovePages, Mprotect, Mremap, Munlock,
    Munmap, Op, OpenDevice, PageRange, Pagemap, Program, Prot, Region, Release, Smaps,
    Snapshot, Switch, Thp, ThpDefrag, ThpEnabled, UffdRegister, UffdUnregister,
    UffdWriteprotect,
)
from harness.prog.text import format_program

MAX_OPS = 40
MAX_GENERATED_REGIONS = 3
PROCESS_NAMES = tuple(f"p{i}" for i in range(10))
REGION_NAMES = ("a", "b", "c", "buffer", "buf", "x")
# How far around a hot page a "hot" range may start, and how long it may be.
HOT_SPREAD = 2
HOT_MAX_LEN = 4


def _identifiers() -> st.SearchStrategy[str]:
    """Names the text form accepts for regions and fds: a lower-case identifier."""
    return st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


def region_pages() -> st.SearchStrategy[int]:
    """Mostly 1..64 pages; sometimes the 512/1024-page buffers hmm-tests uses; rarely more."""
    return st.one_of(
        st.integers(1, 64),
        st.integers(1, 64),
        st.integers(1, 64),
        st.sampled_from((512, 1024)),
        st.integers(1, MAX_REGION_PAGES),
    )


def seeds() -> st.SearchStrategy[int]:
    """Mostly a handful of small seeds, so the same pattern recurs; sometimes any seed."""
    return st.one_of(st.integers(1, 4), st.integers(1, MAX_SEED))


def comment_texts() -> st.SearchStrategy[str]:
    """Text that survives a round trip as a comment: no control characters and no
    characters that `str.splitlines` treats as line breaks."""
    return st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
        max_size=40,
    )


def region_names(count: int) -> st.SearchStrategy[list[str]]:
    name = st.one_of(st.sampled_from(REGION_NAMES), _identifiers())
    return st.lists(name, min_size=count, max_size=count, unique=True)


@st.composite
def regions(draw, max_regions: int = MAX_GENERATED_REGIONS) -> tuple[Region, ...]:
    """1..max_regions regions with distinct names, slots in declaration order."""
    count = draw(st.integers(1, max_regions))
    names = draw(region_names(count))
    return tuple(Region(name, draw(region_pages()), slot) for slot, name in enumerate(names))


@st.composite
def hot_pages(draw, region: Region) -> int:
    """The page a region's ranges cluster around: often its first pages."""
    return draw(st.one_of(st.integers(0, min(3, region.pages - 1)),
                          st.integers(0, region.pages - 1)))


@st.composite
def page_ranges(draw, region: Region, hot: int | None = None) -> PageRange:
    """A range inside `region`: mostly a few pages around `hot`, sometimes the whole
    region, sometimes anything."""
    pages = region.pages
    kind = draw(st.integers(0, 9)) if hot is not None else 9
    if kind <= 5:
        start = draw(st.integers(max(0, hot - HOT_SPREAD), min(pages - 1, hot + HOT_SPREAD)))
        end = start + draw(st.integers(1, min(HOT_MAX_LEN, pages - start)))
    elif kind <= 7:
        start, end = 0, pages
    else:
        start = draw(st.integers(0, pages - 1))
        end = draw(st.integers(start + 1, pages))
    return PageRange(region.name, start, end)


@dataclass
class _State:
    """What exists at the current point of a program being generated."""

    regions: list[Region]               # declared so far
    pending: list[Region]               # still to be declared
    hot: dict[str, int]
    fds: dict[str, list[str]] = field(default_factory=lambda: {"p0": []})
    fd_count: int = 0
    statements: list = field(default_factory=list)
    op_count: int = 0
    target: int = 1  # how many ops the program gets
    extended: bool = False  # draw the ops beyond v1 too
    exited: list[str] = field(default_factory=list)

    def emit(self, op: Op, comment: str | None = None):
        self.statements.append(Located(op, comment=comment))
        self.op_count += 1


# Op kinds, by how often they are drawn. The device ops and CPU accesses dominate; fork is
# rarer since a program may only hold MAX_PROCESSES processes.
_RANGE_OPS = ("map", "munmap", "mprotect", "mprotect", "write", "write", "read", "read")
_DEVICE_OPS = ("dev_read", "dev_read", "dev_write", "dev_write", "snapshot",
               "exclusive", "exclusive", "check_exclusive")
_OP_CHOICES = _RANGE_OPS + _DEVICE_OPS + ("open", "fork")

_DEVICE_KINDS = {
    "dev_read": DevRead, "snapshot": Snapshot,
    "exclusive": Exclusive, "check_exclusive": CheckExclusive,
    "migrate_to_dev": MigrateToDev, "migrate_to_sys": MigrateToSys,
}

# The ops beyond v1, drawn only by programs(extended=True): the reference model does not
# know them yet, so the default op set stays v1's.
_NEW_RANGE_OPS = ("mremap", "madvise", "madvise", "mlock", "munlock", "pagemap", "pagemap")
_NEW_DEVICE_OPS = ("migrate_to_dev", "migrate_to_dev", "migrate_to_sys", "migrate_to_sys")
_NEW_FD_OPS = ("release", "flags", "close")
# Ops on memory the kernel manages for the whole system or process: NUMA placement,
# userfaultfd write-protection, observations through smaps.
_KERNEL_RANGE_OPS = ("move_pages", "mbind", "uffd_register", "uffd_unregister", "uffd_wp",
                     "uffd_wp", "smaps")
# System- or process-wide ops, rarer: each one touches everything at once.
_KERNEL_WIDE_OPS = ("thp", "compact", "clear_soft_dirty", "ksm_merge")
_EXTENDED_OP_CHOICES = (_OP_CHOICES + _NEW_RANGE_OPS + _NEW_DEVICE_OPS + _NEW_FD_OPS
                        + ("exit",) + _KERNEL_RANGE_OPS + _KERNEL_WIDE_OPS)


def _new_fd_name(draw, state: _State) -> str:
    """A name not open in any process: `d<n>` mostly, sometimes any identifier."""
    taken = {fd for fds in state.fds.values() for fd in fds}
    name = draw(st.one_of(st.just(f"d{state.fd_count}"), _identifiers()))
    if name in taken:
        name = f"d{state.fd_count}"
        while name in taken:  # an identifier drawn earlier may have been d<n>
            state.fd_count += 1
            name = f"d{state.fd_count}"
    state.fd_count += 1
    return name


def map_kinds() -> st.SearchStrategy[MapKind]:
    """Mostly anonymous private memory, as v1 maps it."""
    return st.one_of(st.just(MapKind.ANON), st.sampled_from(MapKind))


def _declare(draw, state: _State, region: Region, proc: str):
    """Declare `region`; mostly `proc` maps all of it right away, so that the ops which
    follow find memory there (a program may still map, unmap and remap parts later)."""
    state.statements.append(region)
    state.regions.append(region)
    if state.op_count + 1 < state.target and draw(st.integers(0, 3)) != 0:
        kind = draw(map_kinds()) if state.extended else MapKind.ANON
        state.emit(Map(proc, PageRange(region.name, 0, region.pages), kind))


def _open(draw, state: _State, proc: str) -> str:
    fd = _new_fd_name(draw, state)
    state.emit(OpenDevice(proc, fd, draw(st.sampled_from(DEVICES))))
    state.fds[proc].append(fd)
    return fd


def _range(draw, state: _State, proc: str) -> PageRange:
    if state.pending and draw(st.integers(0, 3)) == 0:
        # Declare a further region here, just before its first use.
        region = state.pending.pop(0)
        _declare(draw, state, region, proc)
    else:
        region = draw(st.sampled_from(state.regions))
    return draw(page_ranges(region, state.hot[region.name]))


def _fd(draw, state: _State, proc: str, max_ops: int) -> str | None:
    """An fd of `proc` for a device op, opening one first when needed (None: no room left
    for the device op itself, and only the open was emitted)."""
    fds = state.fds[proc]
    if not fds or (state.op_count + 1 < max_ops and draw(st.integers(0, 7)) == 0):
        if state.op_count + 1 >= max_ops:
            _open(draw, state, proc)  # no room left for the device op itself
            return None
        return _open(draw, state, proc)
    return draw(st.sampled_from(fds))


def _mremap(draw, state: _State, proc: str, page_range: PageRange) -> Mremap:
    """In place to a new size that fits the region, or moved to any range (maybe with
    dontunmap)."""
    if draw(st.booleans()):
        pages = next(r.pages for r in state.regions if r.name == page_range.region)
        return Mremap(proc, page_range, draw(st.integers(1, pages - page_range.start)))
    region = draw(st.sampled_from(state.regions))
    to = draw(page_ranges(region, state.hot[region.name]))
    return Mremap(proc, page_range, to.npages, to, draw(st.booleans()))


def nodes() -> st.SearchStrategy[int]:
    """The guest's two NUMA nodes mostly; sometimes one it does not have."""
    return st.one_of(st.integers(0, 1), st.integers(0, 1), st.integers(0, MAX_NODE))


def _kernel_range_op(draw, proc: str, page_range: PageRange, choice: str) -> Op:
    match choice:
        case "move_pages":
            return MovePages(proc, page_range, draw(st.one_of(st.none(), nodes())))
        case "mbind":
            return Mbind(proc, page_range, draw(nodes()))
        case "uffd_register":
            return UffdRegister(proc, page_range)
        case "uffd_unregister":
            return UffdUnregister(proc, page_range)
        case "uffd_wp":
            return UffdWriteprotect(proc, page_range, draw(st.sampled_from(Switch)))
        case "smaps":
            return Smaps(proc, page_range)
    raise AssertionError(choice)


def _kernel_wide_op(draw, proc: str, choice: str) -> Op:
    match choice:
        case "thp":
            return Thp(proc, draw(st.sampled_from(ThpEnabled)), draw(st.sampled_from(ThpDefrag)))
        case "compact":
            return Compact(proc)
        case "clear_soft_dirty":
            return ClearSoftDirty(proc)
        case "ksm_merge":
            return KsmMerge(proc)
    raise AssertionError(choice)


def _new_op(draw, state: _State, proc: str, choice: str, max_ops: int):
    """Emit one of the ops beyond v1."""
    if choice in _KERNEL_WIDE_OPS:
        state.emit(_kernel_wide_op(draw, proc, choice))
    elif choice in _KERNEL_RANGE_OPS:
        state.emit(_kernel_range_op(draw, proc, _range(draw, state, proc), choice))
    elif choice == "exit":
        state.emit(Exit(proc))
        del state.fds[proc]
        state.exited.append(proc)
    elif choice in _NEW_RANGE_OPS:
        page_range = _range(draw, state, proc)
        match choice:
            case "mremap":
                state.emit(_mremap(draw, state, proc, page_range))
            case "madvise":
                state.emit(Madvise(proc, page_range, draw(st.sampled_from(Advice))))
            case "mlock":
                state.emit(Mlock(proc, page_range))
            case "munlock":
                state.emit(Munlock(proc, page_range))
            case "pagemap":
                state.emit(Pagemap(proc, page_range))
    elif choice == "close":
        fd = draw(st.sampled_from(state.fds[proc]))
        state.emit(CloseDevice(proc, fd))
        state.fds[proc].remove(fd)
    else:
        fd = _fd(draw, state, proc, max_ops)
        if fd is None:
            return
        if choice == "release":
            state.emit(Release(proc, fd))
        elif choice == "flags":
            state.emit(Flags(proc, fd, draw(st.one_of(st.integers(0, 1),
                                                      st.integers(0, MAX_FLAGS)))))
        else:
            state.emit(_DEVICE_KINDS[choice](proc, fd, _range(draw, state, proc)))


def _op(draw, state: _State, max_ops: int):
    procs = list(state.fds)
    proc = draw(st.sampled_from(procs))
    choice = draw(st.sampled_from(_EXTENDED_OP_CHOICES if state.extended else _OP_CHOICES))
    if choice == "exit" and len(procs) == 1:
        choice = "pagemap"  # the last live process stays, so later ops have one to run in
    if choice == "close" and not state.fds[proc]:
        choice = "open"
    if choice == "fork" and len(procs) + len(state.exited) >= MAX_PROCESSES:
        choice = "open"
    if choice == "fork":
        free = [p for p in PROCESS_NAMES if p not in state.fds and p not in state.exited]
        child = draw(st.sampled_from(free[:3]))  # p1, p2, ... mostly in order
        state.emit(Fork(proc, child))
        state.fds[child] = list(state.fds[proc])  # inherits the fds open now
    elif choice == "open":
        _open(draw, state, proc)
    elif choice in (_NEW_RANGE_OPS + _NEW_DEVICE_OPS + _NEW_FD_OPS + ("exit",)
                    + _KERNEL_RANGE_OPS + _KERNEL_WIDE_OPS):
        _new_op(draw, state, proc, choice, max_ops)
    elif choice in _RANGE_OPS:
        page_range = _range(draw, state, proc)
        match choice:
            case "map":
                kind = draw(map_kinds()) if state.extended else MapKind.ANON
                state.emit(Map(proc, page_range, kind))
            case "munmap":
                state.emit(Munmap(proc, page_range))
            case "mprotect":
                state.emit(Mprotect(proc, page_range, draw(st.sampled_from(Prot))))
            case "write":
                state.emit(CpuWrite(proc, page_range, draw(seeds())))
            case "read":
                state.emit(CpuRead(proc, page_range))
    else:
        fds = state.fds[proc]
        if not fds or (state.op_count + 1 < max_ops and draw(st.integers(0, 7)) == 0):
            if state.op_count + 1 >= max_ops:
                _open(draw, state, proc)  # no room left for the device op itself
                return
            fd = _open(draw, state, proc)
        else:
            fd = draw(st.sampled_from(fds))
        page_range = _range(draw, state, proc)
        if choice == "dev_write":
            state.emit(DevWrite(proc, fd, page_range, draw(seeds())))
        else:
            state.emit(_DEVICE_KINDS[choice](proc, fd, page_range))


def _decorate(draw, statements: list) -> list:
    """Sprinkle comment lines, blank lines and trailing comments over the statements."""
    out = []
    for statement in statements:
        extra = draw(st.integers(0, 9))
        if extra == 0:
            out.append(Comment(draw(comment_texts())))
        elif extra == 1:
            out.append(Blank())
        if isinstance(statement, Located) and draw(st.integers(0, 5)) == 0:
            statement = Located(statement.op, comment=draw(comment_texts()))
        out.append(statement)
    if draw(st.integers(0, 9)) == 0:
        out.append(draw(st.sampled_from([Blank(), Comment("end")])))
    return out


@st.composite
def programs(draw, min_ops: int = 1, max_ops: int = MAX_OPS,
             max_regions: int = MAX_GENERATED_REGIONS, comments: bool = True,
             extended: bool = False) -> Program:
    """A valid program of 1..max_regions regions and min_ops..max_ops ops.

    By default the ops are v1's (what the reference model judges); `extended=True` draws
    from the whole op set.
    """
    assert 1 <= min_ops <= max_ops
    declared = draw(regions(max_regions))
    # The first region is declared up front; each further one either up front too or
    # lazily, just before the first op that names it.
    upfront = 1 + sum(1 for _ in declared[1:] if draw(st.booleans()))
    # Slots follow declaration order, which is what parsing assigns.
    hot = {r.name: draw(hot_pages(r)) for r in declared}
    target = draw(st.integers(min_ops, max_ops))
    state = _State(regions=[], pending=list(declared[upfront:]), hot=hot, target=target,
                   extended=extended)
    for region in declared[:upfront]:
        _declare(draw, state, region, "p0")
    while state.op_count < target:
        _op(draw, state, target)
    statements = _decorate(draw, state.statements) if comments else state.statements
    return Program(tuple(statements))


def program_texts(**kwargs) -> st.SearchStrategy[str]:
    """The canonical text of generated programs."""
    return programs(**kwargs).map(format_program)
