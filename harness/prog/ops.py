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
# The test device's dmirrors: two with device-private memory, and two with device-coherent
# memory (test_hmm with spm_addr_dev0/1 set: the guest reserves RAM for them).
PRIVATE_DEVICES = ("dmirror0", "dmirror1")
COHERENT_DEVICES = ("dmirror2", "dmirror3")
DEVICES = PRIVATE_DEVICES + COHERENT_DEVICES
MAX_FLAGS = 0xFFFF  # HMM_DMIRROR_FLAGS values a program may set (bit 0: FAIL_ALLOC)
# NUMA nodes a program may name: the guest has nodes 0 and 1; 2 and 3 do not exist, so a
# program can also ask for a node that is not there (the kernel answers ENODEV/EINVAL).
MAX_NODE = 3


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


class MapKind(Enum):
    """What backs a mapping. Every `map` is read-write and MAP_FIXED_NOREPLACE.

    MEMFD and FILE name one object per region and program, created empty (zero-filled) and
    sized to the region before the first process starts, so every mapping of the region, in
    any process, maps the same object; page i of the region is page i of the object.
    """

    ANON = "anon"      # MAP_PRIVATE | MAP_ANONYMOUS (the default, not written in text)
    SHARED = "shared"  # MAP_SHARED | MAP_ANONYMOUS
    MEMFD = "memfd"    # MAP_SHARED of the region's memfd
    FILE = "file"      # MAP_PRIVATE of the region's tmpfs file under /tmp

    @property
    def backed(self) -> bool:
        return self in (MapKind.MEMFD, MapKind.FILE)


class Advice(Enum):
    """madvise() advice a program may give (the kernel's MADV_* numbers are in wire.h)."""

    DONTNEED = "dontneed"
    FREE = "free"
    PAGEOUT = "pageout"
    COLD = "cold"
    WILLNEED = "willneed"
    POPULATE_READ = "populate_read"
    POPULATE_WRITE = "populate_write"
    HUGEPAGE = "hugepage"
    NOHUGEPAGE = "nohugepage"
    COLLAPSE = "collapse"
    MERGEABLE = "mergeable"
    UNMERGEABLE = "unmergeable"
    DONTFORK = "dontfork"
    DOFORK = "dofork"
    WIPEONFORK = "wipeonfork"
    KEEPONFORK = "keeponfork"


@dataclass(frozen=True)
class Map(Op):
    """mmap() of the range, read-write, MAP_FIXED_NOREPLACE; `kind` says what backs it."""

    range: PageRange
    kind: MapKind = MapKind.ANON
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
class Mremap(Op):
    """mremap() of the range.

    Without `to`: resize in place to `new_npages` (flags 0; the region must hold the new
    size). With `to`: MREMAP_MAYMOVE | MREMAP_FIXED to that range, whose length is the new
    size (`new_npages == to.npages`), plus MREMAP_DONTUNMAP if `dontunmap`.
    """

    range: PageRange
    new_npages: int
    to: PageRange | None = None
    dontunmap: bool = False
    keyword = "mremap"

    def __post_init__(self):
        if self.to is not None and self.to.npages != self.new_npages:
            raise ValueError(f"mremap to {self.to}: new_npages must be {self.to.npages}")
        if self.dontunmap and self.to is None:
            raise ValueError("mremap dontunmap needs a destination range")


@dataclass(frozen=True)
class Madvise(Op):
    range: PageRange
    advice: Advice
    keyword = "madvise"


@dataclass(frozen=True)
class Mlock(Op):
    range: PageRange
    keyword = "mlock"


@dataclass(frozen=True)
class Munlock(Op):
    range: PageRange
    keyword = "munlock"


@dataclass(frozen=True)
class Pagemap(Op):
    """Observe the range: /proc/self/pagemap per page, and /proc/kpagecount and
    /proc/kpageflags of each present page's PFN. Changes nothing."""

    range: PageRange
    keyword = "pagemap"


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
class Exit(Op):
    """The process exits (_exit(0)); later ops may not name it, nor may a fork reuse its
    name. The op completes once the process is gone (its mm and fds released)."""

    keyword = "exit"


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


@dataclass(frozen=True)
class MigrateToDev(DeviceOp):
    """HMM_DMIRROR_MIGRATE_TO_DEV: migrate the range to device-private memory, then the
    device reads it back (the bytes it returns are observed, as for dev_read)."""

    keyword = "migrate_to_dev"


@dataclass(frozen=True)
class MigrateToSys(DeviceOp):
    """HMM_DMIRROR_MIGRATE_TO_SYS: migrate device-private pages of the range back."""

    keyword = "migrate_to_sys"


@dataclass(frozen=True)
class CloseDevice(Op):
    """close() of the process's fd; the name may be opened again later."""

    fd: str
    keyword = "close"


@dataclass(frozen=True)
class Release(Op):
    """HMM_DMIRROR_RELEASE: the device frees all its memory chunks, evicting every
    device-private page (of every process) back to system memory."""

    fd: str
    keyword = "release"


@dataclass(frozen=True)
class Flags(Op):
    """HMM_DMIRROR_FLAGS (newer kernels): set the mirror's test flags to `flags`
    (bit 0, FAIL_ALLOC: the next device page allocation fails)."""

    fd: str
    flags: int
    keyword = "flags"


class ThpEnabled(Enum):
    """/sys/kernel/mm/transparent_hugepage/enabled"""

    ALWAYS = "always"
    MADVISE = "madvise"
    NEVER = "never"


class ThpDefrag(Enum):
    """/sys/kernel/mm/transparent_hugepage/defrag"""

    ALWAYS = "always"
    DEFER = "defer"
    DEFER_MADVISE = "defer+madvise"
    MADVISE = "madvise"
    NEVER = "never"


# What every program starts with, whatever the program before it set: no THP on fault
# (the v1 model knows 4 KiB pages only) and the kernel's default defrag mode.
THP_DEFAULT = (ThpEnabled.NEVER, ThpDefrag.MADVISE)


class Switch(Enum):
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class Thp(Op):
    """Set the system's THP mode and defrag mode (both sysfs files). System-wide, for the
    rest of the program only: every program starts from THP_DEFAULT."""

    enabled: ThpEnabled
    defrag: ThpDefrag
    keyword = "thp"


@dataclass(frozen=True)
class Compact(Op):
    """Compact all memory of all nodes: write 1 to /proc/sys/vm/compact_memory (it drains
    the per-CPU LRU batches first, then migrates movable pages of every zone)."""

    keyword = "compact"


@dataclass(frozen=True)
class ClearSoftDirty(Op):
    """Clear the soft-dirty bits of the process: write 4 to /proc/<pid>/clear_refs (the
    next write to a page sets its bit again; pagemap shows it)."""

    keyword = "clear_soft_dirty"


@dataclass(frozen=True)
class MovePages(Op):
    """move_pages(2) of the range to `node` with MPOL_MF_MOVE; without a node, only ask
    where each page is (nodes == NULL). Observed: the per-page status array (the node a
    page is on, or -errno)."""

    range: PageRange
    node: int | None = None
    keyword = "move_pages"


@dataclass(frozen=True)
class Mbind(Op):
    """mbind(2) of the range: MPOL_BIND to `node` with MPOL_MF_MOVE (pages already there
    move; later faults allocate on the node)."""

    range: PageRange
    node: int
    keyword = "mbind"


@dataclass(frozen=True)
class UffdRegister(Op):
    """UFFDIO_REGISTER of the range with UFFDIO_REGISTER_MODE_WP on the process's own
    userfaultfd (created at its first uffd op, with UFFD_FEATURE_SIGBUS: a write to a
    write-protected page raises SIGBUS instead of waiting for a handler)."""

    range: PageRange
    keyword = "uffd_register"


@dataclass(frozen=True)
class UffdUnregister(Op):
    """UFFDIO_UNREGISTER of the range."""

    range: PageRange
    keyword = "uffd_unregister"


@dataclass(frozen=True)
class UffdWriteprotect(Op):
    """UFFDIO_WRITEPROTECT of the range: `on` sets the uffd-wp bit of its entries (pagemap
    bit 57), `off` clears it."""

    range: PageRange
    protect: Switch
    keyword = "uffd_wp"


@dataclass(frozen=True)
class KsmMerge(Op):
    """Run KSM until it has scanned every MADV_MERGEABLE page at least twice (ksmd as fast
    as it goes, full_scans advanced by at least 3), then stop it. Observed: how many full
    scans it did and /sys/kernel/mm/ksm/pages_shared and pages_sharing after; ETIMEDOUT if
    the scans did not finish in time. No new full scan for 3 s means there is nothing to
    scan (no live process asked for MADV_MERGEABLE: ksmd then completes at most one full
    scan): the op succeeds with fewer than 3 full scans."""

    keyword = "ksm_merge"


@dataclass(frozen=True)
class Smaps(Op):
    """Observe /proc/<pid>/smaps of every VMA overlapping the range. Changes nothing."""

    range: PageRange
    keyword = "smaps"


V1_OP_KINDS: tuple[type[Op], ...] = (
    Map, Munmap, Mprotect, CpuWrite, CpuRead, Fork, OpenDevice,
    DevRead, DevWrite, Snapshot, Exclusive, CheckExclusive,
)
OP_KINDS: tuple[type[Op], ...] = V1_OP_KINDS + (
    Mremap, Madvise, Mlock, Munlock, Pagemap, Exit, CloseDevice,
    MigrateToDev, MigrateToSys, Release, Flags,
    Thp, Compact, ClearSoftDirty, MovePages, Mbind, UffdRegister, UffdUnregister,
    UffdWriteprotect, KsmMerge, Smaps,
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
