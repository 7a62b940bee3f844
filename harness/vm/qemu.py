"""One QEMU guest running the hmmfuzz runner as /init.

The kernel console goes to a file (the crash oracle reads it); the runner's protocol goes
over a virtio-serial port whose host end is a unix socket. Nothing is connected to stdio:
CI runs with no standard input.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.runner import wire

QEMU = "qemu-system-x86_64"
PORT_NAME = "hmmfuzz.0"


class MachineError(Exception):
    """The VM could not be started or reached (infrastructure, not a kernel finding)."""


class ChannelLost(Exception):
    """The runner's channel closed or went silent: the guest died or hung."""


@dataclass(frozen=True)
class MachineConfig:
    memory_mb: int = 2048
    # Two NUMA nodes, one socket each: a single socket with two nodes makes the guest
    # print a topology WARNING at boot, which would look like a finding.
    cpus: int = 2
    accel: str = "auto"          # "kvm", "tcg" or "auto" (KVM if it boots, else TCG)
    boot_timeout: float = 120.0
    append: str = ""             # extra kernel command line
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def qemu_command(bzimage: Path, initramfs: Path, workdir: Path, socket_path: Path,
                 config: MachineConfig, accel: str) -> list[str]:
    half = config.memory_mb // 2
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    append = " ".join(filter(None, [
        "console=ttyS0", "panic=-1", "nokaslr", "norandmaps", "printk.devkmsg=on",
        config.append,
    ]))
    return [
        QEMU, *accel_args,
        "-m", f"{config.memory_mb}M", "-smp", f"{config.cpus},sockets={config.cpus}",
        "-object", f"memory-backend-ram,id=m0,size={half}M",
        "-object", f"memory-backend-ram,id=m1,size={config.memory_mb - half}M",
        "-numa", "node,nodeid=0,cpus=0,memdev=m0",
        "-numa", f"node,nodeid=1,cpus=1{'-' + str(config.cpus - 1) if config.cpus > 2 else ''},memdev=m1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{workdir / 'console.log'}",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=ctl,path={socket_path},server=on,wait=off",
        "-device", f"virtserialport,chardev=ctl,name={PORT_NAME}",
        "-kernel", str(bzimage), "-initrd", str(initramfs),
        "-append", append,
        *config.extra_args,
    ]


class Machine:
    """A booted guest. `start()` returns the runner's hello; `request()` talks to it."""

    def __init__(self, bzimage: Path, initramfs: Path, workdir: Path,
                 config: MachineConfig = MachineConfig(), accel: str = "tcg"):
        self.bzimage, self.initramfs, self.config, self.accel = bzimage, initramfs, config, accel
        self.workdir = workdir
        # A unix socket path must fit in 108 bytes; workdirs can be deeper than that.
        self.socket_path = Path(tempfile.mkdtemp(prefix="hmmfuzz-")) / "runner.sock"
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.boot_seconds: float | None = None
        self._buffer = b""

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    def console(self, since: int = 0) -> str:
        try:
            with open(self.console_path, "rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def console_size(self) -> int:
        try:
            return self.console_path.stat().st_size
        except FileNotFoundError:
            return 0

    def start(self) -> wire.Hello:
        if shutil.which(QEMU) is None:
            raise MachineError(f"{QEMU} not found: install the Debian package qemu-system-x86")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "console.log").unlink(missing_ok=True)
        self.socket_path.parent.mkdir(exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        command = qemu_command(self.bzimage, self.initramfs, self.workdir, self.socket_path,
                               self.config, self.accel)
        (self.workdir / "qemu.cmdline").write_text(" ".join(command) + "\n")
        started = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=open(self.workdir / "qemu.out", "wb"),
                                        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            self._connect(started + 10)
            msg_type, payload = self.receive(started + self.config.boot_timeout - time.monotonic())
        except ChannelLost as lost:
            self.stop()
            raise MachineError(f"the VM did not boot ({lost}); console tail:\n"
                               f"{self._tail()}\nqemu said: {self._qemu_output()}") from None
        if msg_type != wire.C.MSG_HELLO:
            self.stop()
            raise MachineError(f"the runner's first message was type {msg_type}, not HELLO")
        self.boot_seconds = time.monotonic() - started
        try:
            return wire.decode_hello(payload)
        except wire.ProtocolError as error:
            self.stop()
            raise MachineError(str(error)) from None

    def _connect(self, deadline: float):
        path = str(self.socket_path)
        while True:
            if self.process.poll() is not None:
                raise ChannelLost(f"qemu exited with status {self.process.returncode}")
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise ChannelLost("qemu did not open the runner socket") from None
                time.sleep(0.05)

    def send(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise ChannelLost(f"sending to the runner failed: {error}") from None

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelLost("the runner went silent")
            self.sock.settimeout(min(remaining, 1.0))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                if self.process.poll() is not None:
                    raise ChannelLost(f"qemu exited with status {self.process.returncode}") from None
                continue
            except OSError as error:
                raise ChannelLost(f"the runner channel failed: {error}") from None
            if not chunk:
                raise ChannelLost("the runner channel closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def receive(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        msg_type, length = wire.parse_frame_header(self._read_exact(wire.FRAME_SIZE, deadline))
        return msg_type, self._read_exact(length, deadline)

    def exits_within(self, seconds: float) -> bool:
        """Whether QEMU is gone or goes within `seconds` (its channel closes just before)."""
        try:
            self.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._buffer = b""
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.console().splitlines()[-lines:]) or "(empty)"

    def _qemu_output(self) -> str:
        path = self.workdir / "qemu.out"
        return path.read_text(errors="replace").strip() if path.exists() else ""


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """QEMU must not outlive the process that drives it (libFuzzer exits with exit(),
    which skips Python's cleanup)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)
