"""The host side of the runner protocol (wire.h, parsed by cffi): programs to bytes, and
bytes back to observations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.prog import (
    CheckExclusive, CpuRead, CpuWrite, DevRead, DevWrite, Exclusive, Fork, Map, Mprotect,
    Munmap, OpenDevice, OpResult, Page, Program, Prot, Snapshot,
)
from harness.prog.cheaders import load_headers

WIRE_HEADER = Path(__file__).with_name("wire.h")
ffi = load_headers(WIRE_HEADER)
C = ffi.dlopen(None)

FRAME_SIZE = ffi.sizeof("struct wire_frame")

OP_KIND = {
    Map: C.WOP_MAP, Munmap: C.WOP_MUNMAP, Mprotect: C.WOP_MPROTECT, CpuWrite: C.WOP_WRITE,
    CpuRead: C.WOP_READ, Fork: C.WOP_FORK, OpenDevice: C.WOP_OPEN, DevRead: C.WOP_DEV_READ,
    DevWrite: C.WOP_DEV_WRITE, Snapshot: C.WOP_SNAPSHOT, Exclusive: C.WOP_EXCLUSIVE,
    CheckExclusive: C.WOP_CHECK_EXCLUSIVE,
}
PROT = {Prot.NONE: C.WPROT_NONE, Prot.R: C.WPROT_R, Prot.RW: C.WPROT_RW}


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


class _Numbering:
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
    numbering = _Numbering()
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
        encoded.append(fields)
    if len(encoded) > C.WIRE_MAX_OPS:
        raise ProtocolError(f"{len(encoded)} ops: the runner takes at most {C.WIRE_MAX_OPS}")
    if len(numbering.fds) > C.WIRE_MAX_FDS:
        raise ProtocolError(f"{len(numbering.fds)} fds: the runner takes at most {C.WIRE_MAX_FDS}")
    return encoded


def encode_program(program: Program, serial: int, op_timeout_ms: int) -> bytes:
    ops = encode_ops(program)
    header = ffi.new("struct wire_program *", {"nops": len(ops), "op_timeout_ms": op_timeout_ms,
                                               "serial": serial})
    body = ffi.new("struct wire_op[]", ops) if ops else None
    payload = bytes(ffi.buffer(header)) + (bytes(ffi.buffer(body)) if ops else b"")
    return frame(C.MSG_PROGRAM, payload)


@dataclass(frozen=True)
class Hello:
    release: str
    machine: str
    devices: frozenset[int]
    config_gz: bytes


def decode_hello(payload: bytes) -> Hello:
    size = ffi.sizeof("struct wire_hello")
    hello = ffi.from_buffer("struct wire_hello *", payload[:size])
    if hello.version != C.WIRE_VERSION:
        raise ProtocolError(f"runner speaks wire version {hello.version}, host {C.WIRE_VERSION}")
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
    snapshot = payload[end_pages:end_pages + res.nsnapshot] if res.nsnapshot else None
    has_cmd = bool(res.has_cmd)
    return res.op_index, OpResult(
        errno=res.err,
        cpages=res.cpages if has_cmd else None,
        faults=res.faults if has_cmd else None,
        pages=pages,
        snapshot=snapshot,
    )


@dataclass(frozen=True)
class Done:
    status: int
    ops_run: int
    failed_op: int
    detail: int


def decode_done(payload: bytes) -> Done:
    done = ffi.from_buffer("struct wire_done *", payload)
    return Done(done.status, done.ops_run, done.failed_op, done.detail)
