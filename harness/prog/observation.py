"""What the kernel side reports: one OpResult per op that ran, and how the program ended."""

from __future__ import annotations

import errno as errno_names
import signal as signal_names
from dataclasses import dataclass, field
from enum import Enum

from .content import describe


@dataclass(frozen=True)
class Page:
    """One page of a CPU access or a device transfer.

    `signal` is the signal a CPU access raised (0: none). `crc`/`first_word` describe the
    bytes read (None for writes and for pages that faulted).
    """

    signal: int = 0
    crc: int | None = None
    first_word: int | None = None

    def __str__(self) -> str:
        if self.signal:
            return signal_names.Signals(self.signal).name
        if self.crc is None:
            return "ok"
        return describe(self.crc, self.first_word)


# /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h)
KPF_NAMES = (
    "LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB",
    "WRITEBACK", "RECLAIM", "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED",
    "COMPOUND_HEAD", "COMPOUND_TAIL", "HUGE", "UNEVICTABLE", "HWPOISON", "NOPAGE", "KSM",
    "THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE",
)
KPF = {name: 1 << bit for bit, name in enumerate(KPF_NAMES)}


@dataclass(frozen=True)
class PagemapEntry:
    """One page of a `pagemap` op: the raw /proc/self/pagemap entry and, for a present page
    with a PFN, /proc/kpagecount and /proc/kpageflags of that PFN (None otherwise).

    A swap entry (swapped bit set) holds the swap type in bits 0-4 and the offset above;
    device-private and device-exclusive entries show as swap entries too.
    """

    entry: int
    count: int | None = None
    flags: int | None = None

    @property
    def present(self) -> bool:
        return bool(self.entry & PM_PRESENT)

    @property
    def swapped(self) -> bool:
        return bool(self.entry & PM_SWAP)

    @property
    def file_shared(self) -> bool:
        """Bit 61: a file page or a shared anonymous page."""
        return bool(self.entry & PM_FILE)

    @property
    def exclusive(self) -> bool:
        """Bit 56: the page is mapped exclusively (by this process only)."""
        return bool(self.entry & PM_MMAP_EXCLUSIVE)

    @property
    def uffd_wp(self) -> bool:
        return bool(self.entry & PM_UFFD_WP)

    @property
    def soft_dirty(self) -> bool:
        return bool(self.entry & PM_SOFT_DIRTY)

    @property
    def pfn(self) -> int | None:
        return self.entry & PM_PFN_MASK if self.present else None

    def has_flag(self, name: str) -> bool:
        return self.flags is not None and bool(self.flags & KPF[name])

    def flag_names(self) -> tuple[str, ...]:
        if self.flags is None:
            return ()
        return tuple(name for name, bit in KPF.items() if self.flags & bit)

    def __str__(self) -> str:
        bits = [name for name, on in (("present", self.present), ("swapped", self.swapped),
                                      ("file", self.file_shared), ("exclusive", self.exclusive),
                                      ("uffd_wp", self.uffd_wp), ("soft_dirty", self.soft_dirty))
                if on]
        text = "|".join(bits) or "none"
        if self.count is not None:
            text += f" count={self.count} flags={'|'.join(self.flag_names()) or '0'}"
        return text


# The /proc/<pid>/smaps fields a `smaps` op reports, in kB, in the order of the wire format
# (wire.h enum wire_smaps_field). Rss..Locked exist on every supported kernel (6.1+).
SMAPS_FIELDS = (
    "Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
    "Referenced", "Anonymous", "AnonHugePages", "Swap", "SwapPss", "Locked",
)


@dataclass(frozen=True)
class SmapsVma:
    """One VMA of a `smaps` op: its bounds (virtual addresses, end exclusive) and its
    fields in kB (name -> value; SMAPS_FIELDS, a field the kernel did not print is absent)."""

    start: int
    end: int
    fields: tuple[tuple[str, int], ...]

    def __getitem__(self, name: str) -> int:
        return dict(self.fields)[name]

    def __str__(self) -> str:
        values = " ".join(f"{name}={kb}" for name, kb in self.fields if kb)
        return f"{self.start:#x}-{self.end:#x} {values or 'empty'}"


@dataclass(frozen=True)
class KsmScan:
    """What a `ksm_merge` op saw: full scans ksmd completed while it ran, and
    /sys/kernel/mm/ksm/pages_shared and pages_sharing once it had stopped."""

    full_scans: int
    pages_shared: int
    pages_sharing: int


@dataclass(frozen=True)
class OpResult:
    """The observations of one op.

    errno 0 means success. `cpages`/`faults` are the dmirror command's outputs; the driver
    copies them back only when the ioctl succeeds, so they are None otherwise and for
    non-device ops. `pages` holds per-page outcomes for read/write (one per page, a fault
    does not stop the op) and for a successful dev_read/exclusive (the bytes the device
    returned, also for a successful migrate_to_dev); a failed ioctl reports only its errno.
    `snapshot` holds SNAPSHOT's bytes, `pagemap` a `pagemap` op's per-page records.
    `node_status` holds move_pages()'s status array (per page: its node, or -errno),
    `smaps` a `smaps` op's VMAs, `ksm` a `ksm_merge` op's counters.
    """

    errno: int = 0
    cpages: int | None = None
    faults: int | None = None
    pages: tuple[Page, ...] = ()
    snapshot: bytes | None = None
    pagemap: tuple[PagemapEntry, ...] | None = None
    node_status: tuple[int, ...] | None = None
    smaps: tuple[SmapsVma, ...] | None = None
    ksm: KsmScan | None = None


class Ending(Enum):
    COMPLETED = "completed"   # every op ran
    CRASHED = "crashed"       # the kernel oopsed/panicked or the VM died mid-program
    HUNG = "hung"             # an op did not finish within the timeout
    DIED = "died"             # the process running an op was killed (not a caught fault)


@dataclass(frozen=True)
class MemoryCounters:
    """System memory counters at one point (wire.h enum wire_memory_counter), read after
    the runner drained per-CPU LRU batches, ran the shrinkers and waited for an RCU grace
    period. Pages, except `kernel_stack_kb`; None: the kernel has no such counter."""

    free: int            # nr_free_pages (buddy)
    pcp: int             # on per-CPU free lists (/proc/zoneinfo)
    slab: int            # nr_slab_reclaimable + nr_slab_unreclaimable
    pagetables: int      # nr_page_table_pages
    kernel_stack_kb: int
    zspages: int         # zram's compressed swap
    memmap: int | None   # nr_memmap_pages (6.8+): struct pages of hotplugged memory
    anon: int            # nr_anon_pages
    file: int            # nr_file_pages
    device_chunks: int   # device memory chunks the test device holds
    vmalloc_kb: int      # /proc/meminfo VmallocUsed
    percpu_kb: int       # /proc/meminfo Percpu

    @property
    def free_total(self) -> int:
        """Pages the page allocator can hand out: the buddy lists and the per-CPU lists."""
        return self.free + self.pcp


@dataclass(frozen=True)
class MemoryCheck:
    """The counters before a program and after all its processes were gone, read twice
    (`again` some milliseconds after `after`): a page the kernel holds for a moment shows
    in one of the two readings only, a leaked one in both."""

    before: MemoryCounters
    after: MemoryCounters
    again: MemoryCounters


@dataclass(frozen=True)
class Trace:
    """Everything one run of a program on a kernel produced."""

    kernel_release: str
    results: tuple[OpResult, ...]
    ending: Ending = Ending.COMPLETED
    console: str = field(default="", repr=False)
    memory: MemoryCheck | None = None  # None: not measured (the run did not complete)


def errno_name(number: int) -> str:
    if number == 0:
        return "0"
    return errno_names.errorcode.get(number, str(number))
