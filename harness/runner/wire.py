"""The host side of the runner protocol (wire.h, parsed by cffi): programs to bytes, and
bytes back to observations."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.prog import OpResult, Page, Program
from harness.prog.observation import (
    SMAPS_FIELDS, KsmScan, MemoryCheck, MemoryCounters, PagemapEntry, SmapsVma,
)
from harness.prog.ops import (
    REGION_BASE, Advice, CheckExclusive, ClearSoftDirty, CloseDevice, Compact, CpuRead,
    CpuWrite, DevRead, DevWrite, Exclusive, Exit, Flags, Fork, KsmMerge, Madvise, Map, MapKind,
    Mbind, MigrateToDev, MigrateToSys, Mlock, MovePages, Mprotect, Mremap, Munlock, Munmap,
    OpenDevice, Pagemap, Prot, Release, Smaps, Snapshot, Switch, Thp, ThpDefrag, ThpEnabled,
    UffdRegister, UffdUnregister, UffdWriteprotect,
)
from harness.prog.cheaders import load_headers

WIRE_HEADER = Path(__file__).with_name("wire.h")
# Compiled into the runner and echoed in its hello: a runner built from another wire.h
# (a stale initramfs, a tree changing under a campaign) is refused instead of misread.
WIRE_FINGERPRINT = int.from_bytes(hashlib.sha256(WIRE_HEADER.read_bytes()).digest()[:4], "little")
ffi = load_headers(WIRE_HEADER)
C = ffi.dlopen(None)

FRAME_SIZE = ffi.sizeof("struct wire_frame")

OP_KIND = {
    Map: C.WOP_MAP, Munmap: C.WOP_MUNMAP, Mprotect: C.WOP_MPROTECT, CpuWrite: C.WOP_WRITE,
    CpuRead: C.WOP_READ, Fork: C.WOP_FORK, OpenDevice: C.WOP_OPEN, DevRead: C.WOP_DEV_READ,
    DevWrite: C.WOP_DEV_WRITE, Snapshot: C.WOP_SNAPSHOT, Exclusive: C.WOP_EXCLUSIVE,
    CheckExclusive: C.WOP_CHECK_EXCLUSIVE, MigrateToDev: C.WOP_MIGRATE_TO_DEV,
    MigrateToSys: C.WOP_MIGRATE_TO_SYS, Release: C.WOP_RELEASE, Flags: C.WOP_FLAGS,
    Exit: C.WOP_EXIT, CloseDevice: C.WOP_CLOSE, Madvise: C.WOP_MADVISE, Mremap: C.WOP_MREMAP,
    Mlock: C.WOP_MLOCK, Munlock: C.WOP_MUNLOCK, Pagemap: C.WOP_PAGEMAP, Thp: C.WOP_THP,
    Compact: C.WOP_COMPACT, ClearSoftDirty: C.WOP_CLEAR_SOFT_DIRTY,
    MovePages: C.WOP_MOVE_PAGES, Mbind: C.WOP_MBIND, UffdRegister: C.WOP_UFFD_REGISTER,
    UffdUnregister: C.WOP_UFFD_UNREGISTER, UffdWriteprotect: C.WOP_UFFD_WP,
    KsmMerge: C.WOP_KSM_MERGE, Smaps: C.WOP_SMAPS,
}
THP_ENABLED = {mode: getattr(C, f"WTHP_{mode.name}") for mode in ThpEnabled}
THP_DEFRAG = {mode: getattr(C, f"WDEFRAG_{mode.name}") for mode in ThpDefrag}
SMAPS_RECORD = 2 + C.WSMAPS_NFIELDS
PROT = {Prot.NONE: C.WPROT_NONE, Prot.R: C.WPROT_R, Prot.RW: C.WPROT_RW}
MAP_KIND = {MapKind.ANON: C.WMAP_ANON, MapKind.SHARED: C.WMAP_SHARED,
            MapKind.MEMFD: C.WMAP_MEMFD, MapKind.FILE: C.WMAP_FILE}
BACKING = {MapKind.MEMFD: C.WBACK_MEMFD, MapKind.FILE: C.WBACK_FILE}
MADVISE = {advice: getattr(C, f"WMADV_{advice.name}") for advice in Advice}


class ProtocolError(Exception):
    pass


def frame(msg_type: int, payload: bytes = b"") -> bytes:
    header = ffi.new("struct wire_frame *", {"magic": C.WIRE_MAGIC, "type": msg_type,
                                             "length": len(payload)})
    return bytes(ffi.buffer(header)) + payload


def parse_frame_header(data: bytes) -> tuple[int, int]:
    header = ffi.from_buffer("struct wire_frame *", data)
    if header.magic != C.WIRE_MAGIC:
        raise ProtocolError(f"bad frame magic {header.magic:#x}")
    return header.type, header.length


class Numbering:
    """Process and fd names of a program, numbered in order of appearance."""

    def __init__(self):
        self.procs = {"p0": 0}
        self.fds: dict[str, int] = {}

    def proc(self, name: str) -> int:
        return self.procs.setdefault(name, len(self.procs))

    def fd(self, name: str) -> int:
        # fd names are unique per program in practice; the slot is per name
        return self.fds.setdefault(name, len(self.fds))


def encode_ops(program: Program) -> list[dict]:
    numbering = Numbering()
    encoded = []
    for op in program.ops:
        fields = {"kind": OP_KIND[type(op)], "proc": numbering.proc(op.proc), "target": 0,
                  "arg": 0, "addr": 0, "npages": 0}
        if hasattr(op, "range"):
            fields["addr"] = program.address(op.range)
            fields["npages"] = op.range.npages
        if isinstance(op, Fork):
            fields["target"] = numbering.proc(op.child)
        if hasattr(op, "fd"):
            fields["target"] = numbering.fd(op.fd)
        if isinstance(op, OpenDevice):
            fields["arg"] = int(op.device.removeprefix("dmirror"))
        if isinstance(op, Mprotect):
            fields["arg"] = PROT[op.prot]
        if isinstance(op, (CpuWrite, DevWrite)):
            fields["arg"] = op.seed
        if isinstance(op, Map):
            fields["target"] = program.regions[op.range.region].slot
            fields["arg"] = MAP_KIND[op.kind]
        if isinstance(op, Madvise):
            fields["arg"] = MADVISE[op.advice]
        if isinstance(op, Mremap):
            fields["npages2"] = op.new_npages
            if op.to is not None:
                fields["arg"] = C.WMREMAP_MOVE | (C.WMREMAP_DONTUNMAP if op.dontunmap else 0)
                fields["addr2"] = program.address(op.to)
        if isinstance(op, Release):
            # The ioctl checks the command's range before RELEASE ignores it
            fields["addr"], fields["npages"] = REGION_BASE, 1
        if isinstance(op, Flags):
            fields["addr"], fields["arg"] = REGION_BASE, op.flags
        if isinstance(op, Thp):
            fields["arg"] = THP_ENABLED[op.enabled] | THP_DEFRAG[op.defrag] << 8
        if isinstance(op, MovePages):
            fields["arg"] = C.WIRE_NODE_QUERY if op.node is None else op.node
        if isinstance(op, Mbind):
            fields["arg"] = op.node
        if isinstance(op, UffdWriteprotect):
            fields["arg"] = int(op.protect is Switch.ON)
        encoded.append(fields)
    if len(encoded) > C.WIRE_MAX_OPS:
        raise ProtocolError(f"{len(encoded)} ops: the runner takes at most {C.WIRE_MAX_OPS}")
    if len(numbering.fds) > C.WIRE_MAX_FDS:
        raise ProtocolError(f"{len(numbering.fds)} fds: the runner takes at most {C.WIRE_MAX_FDS}")
    return encoded


def encode_regions(program: Program) -> list[dict]:
    """One record per region slot (slots a program does not use stay empty), with the
    backing objects its `map ... memfd|file` ops need."""
    regions = program.regions
    if not regions:
        return []
    table = [{"addr": 0, "pages": 0, "backing": 0}
             for _ in range(max(r.slot for r in regions.values()) + 1)]
    if len(table) > C.WIRE_MAX_REGIONS:
        raise ProtocolError(f"region slot {len(table) - 1}: the runner takes at most "
                            f"{C.WIRE_MAX_REGIONS} slots")
    for region in regions.values():
        table[region.slot].update(addr=region.address, pages=region.pages)
    for op in program.ops:
        if isinstance(op, Map) and op.kind in BACKING:
            table[regions[op.range.region].slot]["backing"] |= BACKING[op.kind]
    return table


def encode_program(program: Program, serial: int, op_timeout_ms: int, repeat: int = 1) -> bytes:
    ops = encode_ops(program)
    regions = encode_regions(program)
    header = ffi.new("struct wire_program *", {"nops": len(ops), "op_timeout_ms": op_timeout_ms,
                                               "serial": serial, "nregions": len(regions),
                                               "repeat": repeat})
    payload = bytes(ffi.buffer(header))
    if regions:
        payload += bytes(ffi.buffer(ffi.new("struct wire_region[]", regions)))
    if ops:
        payload += bytes(ffi.buffer(ffi.new("struct wire_op[]", ops)))
    return frame(C.MSG_PROGRAM, payload)


def decode_bench_done(payload: bytes) -> tuple[float, int, int]:
    """(guest seconds, runs, failed runs) of a benchmark request."""
    done = ffi.from_buffer("struct wire_bench_done *", payload)
    return done.nanoseconds / 1e9, done.runs, done.failed


def decode_exec_done(payload: bytes) -> tuple[int, bytes]:
    """(wait status, stdout+stderr) of an executable run by MSG_EXEC; status -1: not started."""
    size = ffi.sizeof("struct wire_exec_done")
    done = ffi.from_buffer("struct wire_exec_done *", payload[:size])
    return done.status, payload[size:size + done.output_len]


@dataclass(frozen=True)
class Hello:
    release: str
    machine: str
    devices: frozenset[int]
    config_gz: bytes


def decode_hello(payload: bytes) -> Hello:
    size = ffi.sizeof("struct wire_hello")
    hello = ffi.from_buffer("struct wire_hello *", payload[:size])
    if hello.version != C.WIRE_VERSION or hello.fingerprint != WIRE_FINGERPRINT:
        raise ProtocolError(f"the runner was built from another wire.h (version {hello.version}, "
                            f"fingerprint {hello.fingerprint:#x}; host: version {C.WIRE_VERSION}, "
                            f"fingerprint {WIRE_FINGERPRINT:#x})")
    return Hello(
        release=ffi.string(hello.release).decode(),
        machine=ffi.string(hello.machine).decode(),
        devices=frozenset(i for i in range(4) if hello.devices & (1 << i)),
        config_gz=payload[size:],
    )


def decode_result(payload: bytes) -> tuple[int, OpResult]:
    """(op index, observations) of one MSG_RESULT."""
    size = ffi.sizeof("struct wire_result")
    res = ffi.from_buffer("struct wire_result *", payload[:size])
    page_size = ffi.sizeof("struct wire_page")
    end_pages = size + res.npages * page_size
    raw_pages = ffi.from_buffer("struct wire_page[]", payload[size:end_pages]) if res.npages else []
    pages = tuple(
        Page(signal=p.signal, crc=p.crc, first_word=p.first_word) if p.has_content
        else Page(signal=p.signal)
        for p in raw_pages
    )
    end_snapshot = end_pages + res.nsnapshot
    snapshot = payload[end_pages:end_snapshot] if res.nsnapshot else None
    end_pagemap = end_snapshot + res.npagemap * ffi.sizeof("struct wire_pagemap")
    pagemap = None
    if res.npagemap:
        records = ffi.from_buffer("struct wire_pagemap[]", payload[end_snapshot:end_pagemap])
        pagemap = tuple(PagemapEntry(r.entry, r.count, r.flags) if r.has_page
                        else PagemapEntry(r.entry) for r in records)
    end_values = end_pagemap + res.nvalues * ffi.sizeof("int64_t")
    values = tuple(ffi.from_buffer("int64_t[]", payload[end_pagemap:end_values])) \
        if res.nvalues else ()
    has_cmd = bool(res.has_cmd)
    return res.op_index, OpResult(
        errno=res.err,
        cpages=res.cpages if has_cmd else None,
        faults=res.faults if has_cmd else None,
        pages=pages,
        snapshot=snapshot,
        pagemap=pagemap,
        **_decode_values(res.values_kind, values),
    )


def _decode_values(kind: int, values: tuple[int, ...]) -> dict:
    """The OpResult fields a result's int64 values stand for (wire.h enum wire_values_kind)."""
    if kind == C.WVAL_NODE_STATUS:
        return {"node_status": values}
    if kind == C.WVAL_SMAPS:
        if len(values) % SMAPS_RECORD:
            raise ProtocolError(f"{len(values)} smaps values: not whole VMA records")
        vmas = []
        for at in range(0, len(values), SMAPS_RECORD):
            start, end, *fields = values[at:at + SMAPS_RECORD]
            vmas.append(SmapsVma(start, end, tuple(
                (name, kb) for name, kb in zip(SMAPS_FIELDS, fields) if kb >= 0)))
        return {"smaps": tuple(vmas)}
    if kind == C.WVAL_KSM:
        if len(values) != C.WKSM_NVALUES:
            raise ProtocolError(f"{len(values)} KSM values, expected {C.WKSM_NVALUES}")
        return {"ksm": KsmScan(values[C.WKSM_FULL_SCANS], values[C.WKSM_PAGES_SHARED],
                               values[C.WKSM_PAGES_SHARING])}
    return {}


@dataclass(frozen=True)
class Done:
    status: int
    ops_run: int
    failed_op: int
    detail: int
    memory: MemoryCheck | None = None


def _memory_counters(raw) -> MemoryCounters:
    memmap = raw[C.WMEM_MEMMAP]
    return MemoryCounters(
        free=raw[C.WMEM_FREE], pcp=raw[C.WMEM_PCP], slab=raw[C.WMEM_SLAB],
        pagetables=raw[C.WMEM_PAGETABLES], kernel_stack_kb=raw[C.WMEM_KERNEL_STACK_KB],
        zspages=raw[C.WMEM_ZSPAGES], memmap=memmap if memmap >= 0 else None,
        anon=raw[C.WMEM_ANON], file=raw[C.WMEM_FILE], device_chunks=raw[C.WMEM_DEVICE_CHUNKS],
        vmalloc_kb=raw[C.WMEM_VMALLOC_KB], percpu_kb=raw[C.WMEM_PERCPU_KB],
    )


def decode_memory(payload: bytes) -> MemoryCounters:
    """A MSG_MEMORY: the counters read again on MSG_REMEASURE."""
    if len(payload) != C.WMEM_NCOUNTERS * 8:
        raise ProtocolError(f"MSG_MEMORY of {len(payload)} bytes, expected "
                            f"{C.WMEM_NCOUNTERS * 8}")
    return _memory_counters(ffi.from_buffer("int64_t[]", payload))


def decode_done(payload: bytes) -> Done:
    done = ffi.from_buffer("struct wire_done *", payload)
    memory = None
    if done.measured:
        memory = MemoryCheck(_memory_counters(done.memory_before),
                             _memory_counters(done.memory_after))
    return Done(done.status, done.ops_run, done.failed_op, done.detail, memory)
