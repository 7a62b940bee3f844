"""The op vocabulary: what a program can ask of the kernel.

A program declares named regions (each placed at its own fixed, 2 MiB-aligned slot so runs
are comparable) and then lists ops, each run by one process of a small process tree.
Page ranges are half-open and counted in 4 KiB pages from the start of a region.
Everything here is plain data; the kernel side and the model interpret it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

PAGE_SIZE = 4096
PAGE_SHIFT = 12
# Region slots start at 32 TiB, far below where the kernel places its own mappings
# (top-down from 128 TiB), and are 1 GiB apart so a region can later grow with mremap.
REGION_BASE = 0x2000_0000_0000
REGION_STRIDE = 1 << 30
MAX_REGIONS = 16
MAX_REGION_PAGES = 8192  # 32 MiB: enough for several PMD-sized (2 MiB) folios
MAX_PROCESSES = 4
MAX_SEED = 0xFFFF
DEVICES = ("dmirror0", "dmirror1")


class Prot(Enum):
    """mprotect() protections a program may ask for."""

    NONE = "none"
    R = "r"
    RW = "rw"

    @property
    def readable(self) -> bool:
        return self is not Prot.NONE

    @property
    def writable(self) -> bool:
        return self is Prot.RW


@dataclass(frozen=True)
class Region:
    """A named slot of address space; `pages` bounds the ranges that may name it."""

    name: str
    pages: int
    slot: int

    @property
    def address(self) -> int:
        return REGION_BASE + self.slot * REGION_STRIDE


@dataclass(frozen=True)
class PageRange:
    region: str
    start: int
    end: int  # exclusive

    @property
    def npages(self) -> int:
        return self.end - self.start

    def __iter__(self):
        return iter(range(self.start, self.end))

    def __str__(self) -> str:
        return f"{self.region}[{self.start}:{self.end}]"


@dataclass(frozen=True)
class Op:
    """Base of every op: `proc` names the process that performs it."""

    proc: str

    # The text keyword of each op kind; set on every subclass.
    keyword = ""


@dataclass(frozen=True)
class Map(Op):
    """mmap(anonymous, private, read-write) of the range, MAP_FIXED_NOREPLACE."""

    range: PageRange
    keyword = "map"


@dataclass(frozen=True)
class Munmap(Op):
    range: PageRange
    keyword = "munmap"


@dataclass(frozen=True)
class Mprotect(Op):
    range: PageRange
    prot: Prot
    keyword = "mprotect"


@dataclass(frozen=True)
class CpuWrite(Op):
    """The CPU stores the deterministic pattern of `seed` into every page of the range."""

    range: PageRange
    seed: int
    keyword = "write"


@dataclass(frozen=True)
class CpuRead(Op):
    """The CPU loads every page of the range; the outcome is a digest or a fault signal."""

    range: PageRange
    keyword = "read"


@dataclass(frozen=True)
class Fork(Op):
    """The process forks; the child becomes process `child`."""

    child: str
    keyword = "fork"


@dataclass(frozen=True)
class OpenDevice(Op):
    """open("/dev/hmm_<device>"): the new fd mirrors the mm of the opening process."""

    fd: str
    device: str
    keyword = "open"


@dataclass(frozen=True)
class DeviceOp(Op):
    """An ioctl on a dmirror fd over a page range."""

    fd: str
    range: PageRange


@dataclass(frozen=True)
class DevRead(DeviceOp):
    """HMM_DMIRROR_READ: the device reads the range through its mirror."""

    keyword = "dev_read"


@dataclass(frozen=True)
class DevWrite(DeviceOp):
    """HMM_DMIRROR_WRITE: the device writes the pattern of `seed` through its mirror."""

    seed: int = 1
    keyword = "dev_write"


@dataclass(frozen=True)
class Snapshot(DeviceOp):
    """HMM_DMIRROR_SNAPSHOT: one protection byte per page, without faulting anything."""

    keyword = "snapshot"


@dataclass(frozen=True)
class Exclusive(DeviceOp):
    """HMM_DMIRROR_EXCLUSIVE: make_device_exclusive() on each page, then read it back."""

    keyword = "exclusive"


@dataclass(frozen=True)
class CheckExclusive(DeviceOp):
    """HMM_DMIRROR_CHECK_EXCLUSIVE: -EPERM while any page is still atomic on the device."""

    keyword = "check_exclusive"


OP_KINDS: tuple[type[Op], ...] = (
    Map, Munmap, Mprotect, CpuWrite, CpuRead, Fork, OpenDevice,
    DevRead, DevWrite, Snapshot, Exclusive, CheckExclusive,
)
OP_BY_KEYWORD: dict[str, type[Op]] = {kind.keyword: kind for kind in OP_KINDS}


@dataclass(frozen=True)
class Comment:
    text: str  # without the leading "# "


@dataclass(frozen=True)
class Blank:
    pass


@dataclass(frozen=True)
class Located:
    """An op with the line it came from (0 for ops built in memory) and a trailing comment."""

    op: Op
    line: int = field(default=0, compare=False)
    comment: str | None = field(default=None, compare=False)


Statement = Region | Located | Comment | Blank


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    source: str = field(default="<program>", compare=False)

    @property
    def regions(self) -> dict[str, Region]:
        return {s.name: s for s in self.statements if isinstance(s, Region)}

    @property
    def located_ops(self) -> tuple[Located, ...]:
        return tuple(s for s in self.statements if isinstance(s, Located))

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(s.op for s in self.located_ops)

    def address(self, page_range: PageRange, page: int | None = None) -> int:
        """Virtual address of `page` (default: the first page) of the range."""
        region = self.regions[page_range.region]
        index = page_range.start if page is None else page
        return region.address + index * PAGE_SIZE

    def where(self, index: int) -> str:
        """`file:line` of the index-th op, for messages a person can follow."""
        located = self.located_ops[index]
        return f"{self.source}:{located.line}" if located.line else f"{self.source}:op{index}"

    def with_ops(self, ops: list[Op] | tuple[Op, ...]) -> "Program":
        """The same regions with another op list (used by generators and the minimizer)."""
        regions = tuple(s for s in self.statements if isinstance(s, Region))
        return Program(regions + tuple(Located(op) for op in ops), source=self.source)
