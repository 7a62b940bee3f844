"""Program-level generation and mutation for coverage-guided campaigns.

libFuzzer hands us bytes and a seed; we hand back canonical program text, so every corpus
file stays a readable program whatever libFuzzer names it. Choices come from a Chooser:
`random.Random` for mutations, libFuzzer's FuzzedDataProvider when arbitrary bytes must be
decoded into a program. Every candidate is validated through the text form; invalid ones
are retried, so mutants stay valid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from harness.prog import ParseError, Program, format_program, parse_program
from reference import Simulation
from harness.prog.ops import (
    DEVICES, MAX_NODE, MAX_PROCESSES, MAX_SEED, Advice, CheckExclusive, ClearSoftDirty,
    CloseDevice, Compact, CpuRead, CpuWrite, DevRead, DevWrite, Exclusive, Exit, Flags, Fork, KsmMerge,
    Located, Madvise, Map, MapKind, Mbind, MigrateToDev, MigrateToSys, Mlock, MovePages, Mprotect, Mremap,
    Munlock, Munmap, Op, OpenDevice, PageRange, Pagemap, Prot, Region, Release, Smaps, Snapshot,
    Switch, Thp, ThpDefrag, ThpEnabled, UffdRegister, UffdUnregister, UffdWriteprotect,
)

MAX_OPS = 64
# The ops the reference model knows (docs/model.md); campaigns draw from these. An op the
# model refuses would leave the rest of the program unchecked.
RANGE_OPS = (Map, Munmap, Mprotect, CpuWrite, CpuRead, Madvise, Pagemap, Mlock, Munlock,
             Mremap, MovePages, Mbind, UffdRegister, UffdUnregister, UffdWriteprotect, Smaps)
DEVICE_OPS = (DevRead, DevWrite, Snapshot, Exclusive, CheckExclusive, MigrateToDev, MigrateToSys)
FD_OPS = (Release, CloseDevice, Flags)
# The model states shared anonymous, memfd and private tmpfs-file mappings too: about one
# region in three starts as one of them (page-cache folios, fault-around, no COW on fork).
SHMEM_KINDS = (MapKind.SHARED, MapKind.MEMFD, MapKind.FILE)
MODELLED_ADVICE = tuple(Advice)
THP_ADVICE = (Advice.COLD, Advice.PAGEOUT, Advice.FREE, Advice.COLLAPSE)
SEEDS_OF_INTEREST = (1, 2, 3, MAX_SEED)


class Chooser:
    """Where choices come from: a Random, or (subclass) libFuzzer's data provider."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def pick(self, items):
        items = list(items)
        return items[self.integer(0, len(items) - 1)]

    def chance(self, percent: int) -> bool:
        return self.integer(0, 99) < percent


class BytesChooser(Chooser):
    """Decodes arbitrary bytes into choices (atheris.FuzzedDataProvider)."""

    def __init__(self, provider):
        self.provider = provider

    def integer(self, low: int, high: int) -> int:
        return self.provider.ConsumeIntInRange(low, high)


@dataclass
class Scope:
    """Who exists after a prefix of ops: live processes and the fds each one holds."""

    regions: dict[str, Region]
    fds: dict[str, set[str]] = field(default_factory=lambda: {"p0": set()})

    @classmethod
    def after(cls, regions: dict[str, Region], ops) -> "Scope":
        scope = cls(regions)
        for op in ops:
            if isinstance(op, Fork):
                scope.fds[op.child] = set(scope.fds[op.proc])
            elif isinstance(op, OpenDevice):
                scope.fds[op.proc].add(op.fd)
            elif isinstance(op, CloseDevice):
                scope.fds[op.proc].discard(op.fd)
            elif isinstance(op, Exit):
                del scope.fds[op.proc]
        return scope


def _page_range(chooser: Chooser, region: Region) -> PageRange:
    """Mostly short ranges near the start (where ops collide), sometimes the whole region."""
    if chooser.chance(20):
        return PageRange(region.name, 0, region.pages)
    start = chooser.integer(0, min(region.pages - 1, 7) if chooser.chance(70) else region.pages - 1)
    end = chooser.integer(start + 1, min(region.pages, start + (4 if chooser.chance(70) else 64)))
    return PageRange(region.name, start, end)


def random_op(chooser: Chooser, scope: Scope, all_ops: list[Op]) -> Op:
    proc = chooser.pick(sorted(scope.fds))
    fds = sorted(scope.fds[proc])
    kinds = [OpenDevice] + (list(FD_OPS) if fds else [])
    if scope.regions:  # a program may declare no region at all: then no range ops
        kinds += list(RANGE_OPS) + (list(DEVICE_OPS) if fds else [])
    if proc != "p0" and chooser.chance(10):
        return Exit(proc)
    forks = sum(isinstance(op, Fork) for op in all_ops)
    if forks + 1 < MAX_PROCESSES:  # exited processes still count towards the limit
        kinds.append(Fork)
    if chooser.chance(5):
        kind = chooser.pick((ClearSoftDirty, Compact, KsmMerge, Thp))
        if kind is Thp:
            return Thp(proc, chooser.pick(list(ThpEnabled)), chooser.pick(list(ThpDefrag)))
        return kind(proc)
    huge = [r for r in scope.regions.values() if r.pages >= 512]
    if huge and chooser.chance(2):
        # madvise collapse over a whole region that holds an aligned 2 MiB: the advice pick
        # below draws it too rarely, and mostly over ranges without a whole PMD
        region = chooser.pick(sorted(huge, key=lambda r: r.slot))
        return Madvise(proc, PageRange(region.name, 0, region.pages), Advice.COLLAPSE)
    kind = chooser.pick(kinds)
    if kind is Fork:
        taken = set(scope.fds) | {op.child for op in all_ops if isinstance(op, Fork)}
        return Fork(proc, child=next(f"p{i}" for i in range(10) if f"p{i}" not in taken))
    if kind is OpenDevice:
        taken = {op.fd for op in all_ops if isinstance(op, OpenDevice)}
        name = next(f"d{i}" for i in range(64) if f"d{i}" not in taken)
        return OpenDevice(proc, fd=name, device=chooser.pick(DEVICES))
    if kind is Flags:  # FAIL_ALLOC (bit 0) or clear
        return Flags(proc, chooser.pick(fds), chooser.integer(0, 1))
    if kind in FD_OPS:
        return kind(proc, chooser.pick(fds))
    region = chooser.pick(sorted(scope.regions.values(), key=lambda r: r.slot))
    page_range = _page_range(chooser, region)
    if kind is Mprotect:
        return Mprotect(proc, page_range, chooser.pick(list(Prot)))
    if kind is CpuWrite:
        return CpuWrite(proc, page_range, chooser.pick(SEEDS_OF_INTEREST))
    if kind is Madvise:
        thp_on = any(isinstance(op, Thp) and op.enabled is not ThpEnabled.NEVER
                     for op in all_ops)
        # with THPs about, often the advice whose THP handling is stated: the splits of a
        # THP a range covers in part, and collapse
        advice = chooser.pick(THP_ADVICE if thp_on and chooser.chance(50) else MODELLED_ADVICE)
        if advice is Advice.COLLAPSE and chooser.chance(50):
            # MADV_COLLAPSE acts on the aligned 2 MiB inside the range only
            page_range = PageRange(region.name, 0, region.pages)
        return Madvise(proc, page_range, advice)
    if kind is Mremap:
        return _mremap(chooser, scope, proc, page_range)
    if kind is MovePages:
        return MovePages(proc, page_range, None if chooser.chance(40) else _node(chooser))
    if kind is Mbind:
        return Mbind(proc, page_range, _node(chooser))
    if kind is UffdWriteprotect:
        return UffdWriteprotect(proc, page_range, chooser.pick(list(Switch)))
    if kind in (Map, Munmap, CpuRead, Pagemap, Mlock, Munlock, UffdRegister, UffdUnregister,
                Smaps):
        return kind(proc, page_range)
    fd = chooser.pick(fds)
    if kind is DevWrite:
        return DevWrite(proc, fd, page_range, seed=chooser.pick(SEEDS_OF_INTEREST))
    return kind(proc, fd, page_range)


def _node(chooser: Chooser) -> int:
    """Node 0 or 1 (the guest's two), now and then one without memory."""
    return chooser.integer(0, MAX_NODE) if chooser.chance(10) else chooser.integer(0, 1)


def _mremap(chooser: Chooser, scope: Scope, proc: str, page_range: PageRange) -> Mremap:
    """A resize in place (often a grow by a page or two), or a move to a range of any region
    (often the same size; sometimes with MREMAP_DONTUNMAP)."""
    region = scope.regions[page_range.region]
    if chooser.chance(40):
        room = region.pages - page_range.start
        return Mremap(proc, page_range, chooser.integer(1, min(room, page_range.npages + 4)))
    target = chooser.pick(sorted(scope.regions.values(), key=lambda r: r.slot))
    length = page_range.npages if chooser.chance(70) else chooser.integer(1, target.pages)
    length = min(length, target.pages)
    start = chooser.integer(0, target.pages - length)
    dontunmap = length == page_range.npages and chooser.chance(30)
    return Mremap(proc, page_range, length, PageRange(target.name, start, start + length),
                  dontunmap)


def valid(regions: tuple[Region, ...], ops: list[Op], source: str = "<mutant>") -> Program | None:
    if not ops or len(ops) > MAX_OPS:
        return None
    program = Program(regions + tuple(Located(op) for op in ops), source=source)
    try:
        return parse_program(format_program(program), source)
    except ParseError:
        return None


def _regions(program: Program) -> tuple[Region, ...]:
    return tuple(s for s in program.statements if isinstance(s, Region))


# Draws for one op slot before the generator gives up on it when the model refuses each.
REDRAWS = 4
# How often a drawn op the model refuses is kept all the same (see generate).
REFUSED_KEPT_PERCENT = 10


def generate(chooser: Chooser, max_ops: int = 24, kernel_release: str | None = "7.2.0") -> Program:
    """A fresh program: a region or two, mapped, then random ops. With a `kernel_release`
    the model is run alongside (reference.Simulation, that kernel's profile) and an op it
    refuses is mostly drawn again, so that most programs are checked to their end (a
    refused op leaves every later one unchecked); now and then (REFUSED_KEPT_PERCENT) the
    refused op is kept, because the model refuses exactly where the kernel is least known,
    known crashes included, and the crash, hang and leak oracles still judge the whole
    program. `None` draws unguided."""
    huge = chooser.chance(15)    # THP on from the start, over a region of whole PMDs
    regions = tuple(Region(name, chooser.pick((512, 1024) if huge and slot == 0 else
                                              (1, 4, 16, 64, 512, 1024)), slot)
                    for slot, name in enumerate("ab"[:chooser.integer(1, 2)]))
    prologue: list[Op] = []
    if huge:
        prologue.append(Thp("p0", chooser.pick((ThpEnabled.ALWAYS,) * 3 + (ThpEnabled.MADVISE,)),
                            chooser.pick(list(ThpDefrag))))
    prologue += [Map("p0", PageRange(r.name, 0, r.pages),
                     MapKind.ANON if huge or chooser.chance(70) else chooser.pick(SHMEM_KINDS))
                 for r in regions]
    prologue.append(OpenDevice("p0", "d0", chooser.pick(DEVICES)))
    model = None
    if kernel_release is not None:
        model = Simulation(Program(regions, source="<generated>"), kernel_release)
    ops: list[Op] = []

    def take(op: Op, may_keep_refused: bool = True) -> bool:
        nonlocal model
        if not valid(regions, ops + [op]):
            return False
        if model is not None and not model.admits(op):
            if not (may_keep_refused and chooser.chance(REFUSED_KEPT_PERCENT)):
                return False
            model = None   # the state after a refused op is unknown: unguided from here
        ops.append(op)
        return True

    for op in prologue:  # (an older kernel's model refuses turning THP on: then it stays off)
        take(op, may_keep_refused=False)
    for _ in range(chooser.integer(1, max_ops)):
        for _ in range(REDRAWS):
            if take(random_op(chooser, Scope.after({r.name: r for r in regions}, ops), ops)):
                break
    return valid(regions, ops, "<generated>")


# ---------------------------------------------------------------------- mutations

def _insert(chooser, regions, ops, other):
    at = chooser.integer(0, len(ops))
    scope = Scope.after({r.name: r for r in regions}, ops[:at])
    return ops[:at] + [random_op(chooser, scope, ops)] + ops[at:]


def _delete(chooser, regions, ops, other):
    at = chooser.integer(0, len(ops) - 1)
    return ops[:at] + ops[at + 1:]


def _duplicate(chooser, regions, ops, other):
    op = chooser.pick(ops)
    at = chooser.integer(0, len(ops))
    return ops[:at] + [op] + ops[at:]


def _boundary(chooser, regions, ops, other):
    """Move a range or a seed toward the values where code paths change."""
    at = chooser.integer(0, len(ops) - 1)
    op = ops[at]
    if hasattr(op, "range") and chooser.chance(80):
        r, pages = op.range, {x.name: x for x in regions}[op.range.region].pages
        start, end = chooser.pick([(0, r.end), (r.start, pages), (r.start, r.start + 1),
                                   (max(0, r.start - 1), r.end), (r.start, min(pages, r.end + 1)),
                                   (r.end - 1, r.end), (0, pages)])
        op = replace(op, range=PageRange(r.region, start, max(end, start + 1)))
    elif hasattr(op, "seed"):
        op = replace(op, seed=chooser.pick(SEEDS_OF_INTEREST))
    elif isinstance(op, Mprotect):
        op = replace(op, prot=chooser.pick(list(Prot)))
    return ops[:at] + [op] + ops[at + 1:]


def _retarget(chooser, regions, ops, other):
    """Hand an op to another process, or point its range at another region."""
    at = chooser.integer(0, len(ops) - 1)
    op = ops[at]
    scope = Scope.after({r.name: r for r in regions}, ops[:at])
    if chooser.chance(50) and not isinstance(op, Fork):
        op = replace(op, proc=chooser.pick(sorted(scope.fds)))
    elif hasattr(op, "range") and regions:
        region = chooser.pick(regions)
        start = min(op.range.start, region.pages - 1)
        op = replace(op, range=PageRange(region.name, start, min(region.pages, start + op.range.npages)))
    return ops[:at] + [op] + ops[at + 1:]


def _splice(chooser, regions, ops, other):
    """A prefix of this program, then a suffix of another over the same region names."""
    names = {r.name for r in regions}
    tail = [op for op in other.ops if not hasattr(op, "range") or op.range.region in names]
    if not tail:
        return ops
    return ops[:chooser.integer(0, len(ops))] + tail[chooser.integer(0, len(tail) - 1):]


def _burst(chooser, regions, ops, other):
    """Several fresh ops in a row: most kernel bugs found so far need three to five ops on
    the same pages (e.g. migrate_to_dev, mprotect, dev_read), which single insertions
    reach only through many rounds of selection."""
    at = chooser.integer(0, len(ops))
    burst: list[Op] = []
    for _ in range(chooser.integer(2, 8)):
        scope = Scope.after({r.name: r for r in regions}, ops[:at] + burst)
        burst.append(random_op(chooser, scope, ops[:at] + burst))
    return ops[:at] + burst + ops[at:]


MUTATIONS = (_insert, _insert, _burst, _delete, _duplicate, _boundary, _boundary, _retarget,
             _splice)
# How often a mutation starts over from a fresh program: the mutator then keeps the
# unguided generator's reach while coverage decides which programs are worth varying.
FRESH_PERCENT = 10


def mutate(program: Program, chooser: Chooser, other: Program | None = None,
           attempts: int = 16) -> Program:
    if chooser.chance(FRESH_PERCENT):
        return generate(chooser)
    regions, ops = _regions(program), list(program.ops)
    for _ in range(attempts):
        mutation = chooser.pick(MUTATIONS if other is not None else MUTATIONS[:-1])
        candidate = valid(regions, mutation(chooser, regions, ops, other or program))
        if candidate is not None and candidate.ops != program.ops:
            return candidate
    return program


def decode(data: bytes, provider_factory=None) -> Program:
    """Canonical program text parses as is; anything else is decoded into a program."""
    try:
        return parse_program(data.decode(), "<input>")
    except (UnicodeDecodeError, ParseError):
        pass
    if provider_factory is not None:
        return generate(BytesChooser(provider_factory(data)))
    return generate(Chooser(random.Random(data)))


def encode(program: Program, max_size: int) -> bytes:
    """The program's text, dropping trailing ops until it fits libFuzzer's size limit."""
    ops = list(program.ops)
    while True:
        text = format_program(program.with_ops(ops)).encode()
        if len(text) <= max_size or len(ops) <= 1:
            return text[:max_size]
        ops.pop()
