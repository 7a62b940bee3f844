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

    def describe(self) -> str:
        """One line for a person, runs of equal per-page values folded ("ok x3"): what the
        kernel reported, for ops whose verdict alone does not show it."""
        parts = [f"errno={errno_name(self.errno)}"]
        parts += [f"{name}={value}" for name, value in (("cpages", self.cpages),
                                                       ("faults", self.faults))
                  if value is not None]
        for name, values in (("pages", self.pages), ("snapshot", self.snapshot),
                             ("pagemap", self.pagemap), ("node_status", self.node_status)):
            if values:
                shown = (f"{b:#04x}" for b in values) if name == "snapshot" else map(str, values)
                parts.append(f"{name}=[{', '.join(_runs(shown))}]")
        if self.smaps is not None:
            parts.append(f"smaps=[{'; '.join(map(str, self.smaps))}]")
        if self.ksm is not None:
            parts.append(f"ksm={self.ksm}")
        return " ".join(parts)


def _runs(values, keep: int = 6) -> list[str]:
    """Equal neighbours folded ("ok x3"); past `keep` runs only the first and last few."""
    folded: list[list] = []
    total = 0
    for value in values:
        total += 1
        if folded and folded[-1][0] == value:
            folded[-1][1] += 1
        else:
            folded.append([value, 1])
    shown = [value if count == 1 else f"{value} x{count}" for value, count in folded]
    if len(shown) > keep:
        shown = shown[:keep - 2] + [f"... ({total} in all)"] + shown[-2:]
    return shown


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
    device_chunks: int   # changes when the test device adds or removes a memory chunk
    vmalloc_kb: int      # /proc/meminfo VmallocUsed
    percpu_kb: int       # /proc/meminfo Percpu

    @property
    def free_total(self) -> int:
        """Pages the page allocator can hand out: the buddy lists and the per-CPU lists."""
        return self.free + self.pcp


# The leak check. Method: the runner reads memory counters before each program (the last
# program's final reading) and after all its processes are gone (wire.h enum
# wire_memory_counter; each reading after drop_caches=1, which drains every CPU's LRU
# batches, and repeated until two readings 5 ms apart agree on free pages and slab);
# MemoryCheck.leaked_pages() balances them. Calibration on programs known to be clean
# (tests/leak_calibration.py: the corpus and random programs of both op sets, records in
# tests/data/leak_calibration_<kernel>.json) measured the noise of that balance:
#   7.2.13    212 programs (seed 31: 100 modelled + 100 all-op random)  -65 .. +58 pages
#   6.12.117  133 programs (seed 32: 60 + 60)                           -62 .. +54 pages
#   6.1.192   134 programs (seed 33: 60 + 60)                           -73 .. +32 pages,
#             20 of them inconclusive (a device chunk came or went; 6.1 has no memmap counter)
# With a single reading after the program, one run in ~200 read +284 (a transient
# allocation, back 20 ms later): so a balance beyond the noise (NOISE_PAGES, about twice
# the worst measured) is read again 20 ms later (the session asks for it, MSG_REMEASURE)
# and the smaller of the two counts. (Re-reading only above the threshold let a transient
# between the two bounds through: one corpus program on 6.1 once balanced above 128 in a
# clean-clone CI run, none of 156 reruns did.) The threshold is more than 3.5 times the
# worst balance measured, so a report is never noise; a leak must exceed it.
LEAK_THRESHOLD_PAGES = 256
NOISE_PAGES = LEAK_THRESHOLD_PAGES // 2


@dataclass(frozen=True)
class MemoryCheck:
    """The counters before a program and after all its processes were gone. `again` is a
    second reading some milliseconds after `after`, taken only when `after` alone balances
    beyond the noise: a page the kernel holds for a moment shows in one of the two readings
    only, a leaked one in both."""

    before: MemoryCounters
    after: MemoryCounters
    again: MemoryCounters | None = None

    def needs_second_reading(self) -> bool:
        first = _balance(self.before, self.after)
        return self.again is None and first is not None and first > NOISE_PAGES

    def leaked_pages(self) -> int | None:
        """Pages that left the page allocator during the program and did not come back,
        less what the kernel's own counters say it holds now and did not hold before: slab,
        page tables, vmalloc (kernel stacks among it), per-CPU areas, zram's compressed
        pages, anonymous and file pages, and the struct pages of hotplugged memory (6.8+'s
        nr_memmap_pages). Negative when more came back than left. Of the readings after the
        program, the smaller balance counts: a leak is in both, a page the kernel held for
        a moment in one only.

        None when it cannot be told: the test device took or gave back a device memory
        chunk (HMM_DMIRROR_RELEASE frees them on 7.2, the next migration allocates one) on a
        kernel without nr_memmap_pages (6.1), where the chunk's struct pages are counted
        nowhere."""
        readings = [self.after] if self.again is None else [self.after, self.again]
        balances = [_balance(self.before, after) for after in readings]
        if None in balances:
            return None
        return min(balances)


def _balance(before: MemoryCounters, after: MemoryCounters) -> int | None:
    if after.device_chunks != before.device_chunks and (after.memmap is None
                                                        or before.memmap is None):
        return None
    gone = before.free_total - after.free_total
    held = ((after.slab - before.slab) + (after.pagetables - before.pagetables)
            + (after.vmalloc_kb - before.vmalloc_kb) // 4
            + (after.percpu_kb - before.percpu_kb) // 4
            + (after.zspages - before.zspages) + (after.anon - before.anon)
            + (after.file - before.file))
    if after.memmap is not None and before.memmap is not None:
        held += after.memmap - before.memmap
    return gone - held


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
