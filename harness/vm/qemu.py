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


# lib/test_hmm.c makes devices 2 and 3 device-coherent when its parameters spm_addr_dev0 and
# spm_addr_dev1 name DEVMEM_CHUNK_SIZE (256 MiB) each of CPU-addressable RAM that the kernel
# does not own: memremap_pages() -> pagemap_range() refuses a range that intersects System
# RAM. So the guest gets that much RAM on top of `memory_mb`, and `memmap=<size>$<start>`
# marks it reserved in the e820 map. It sits at the top of node 0's RAM, so node 0 still
# spans it (the chunks are added to node 0's ZONE_DEVICE) and node 1 starts right after it.
COHERENT_CHUNK_MB = 256
COHERENT_DEVICES = 2
# The pc machine puts all RAM below 4 GiB while it is under 3.5 GiB (above that it splits
# the RAM around the PCI hole, and the reserved range could land in it).
PC_LOWMEM_LIMIT_MB = 3584


@dataclass(frozen=True)
class MachineConfig:
    memory_mb: int = 2048        # RAM the guest kernel owns (the coherent chunks come on top)
    # Two NUMA nodes, one socket each: a single socket with two nodes makes the guest
    # print a topology WARNING at boot, which would look like a finding.
    cpus: int = 2
    accel: str = "auto"          # "kvm", "tcg" or "auto" (KVM if it boots, else TCG)
    boot_timeout: float = 120.0
    append: str = ""             # extra kernel command line
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    coherent_devices: bool = True  # /dev/hmm_dmirror2 and 3 (device-coherent)


@dataclass(frozen=True)
class MemoryLayout:
    """Guest physical memory: node 0 = [0, node0_mb) including the reserved coherent
    chunks at its top, node 1 = [node0_mb, node0_mb + node1_mb)."""

    node0_mb: int
    node1_mb: int
    coherent_starts: tuple[int, ...]  # byte addresses of the chunks of dmirror2, dmirror3

    @property
    def total_mb(self) -> int:
        return self.node0_mb + self.node1_mb

    def coherent_pfns(self, device: int) -> range:
        """The PFNs of the chunk /dev/hmm_dmirror<device> (2 or 3) hands out pages from."""
        start = self.coherent_starts[device - 2] >> 12
        return range(start, start + (COHERENT_CHUNK_MB << 20 >> 12))

    def kernel_arguments(self) -> list[str]:
        if not self.coherent_starts:
            return []
        size = COHERENT_CHUNK_MB * len(self.coherent_starts)
        # test_hmm gives dmirror2 the chunk at spm_addr_dev1 and dmirror3 the one at
        # spm_addr_dev0 (dmirror_allocate_chunk: `MINOR(devt) - 2 ? dev0 : dev1`).
        dev1, dev0 = self.coherent_starts
        return [f"memmap={size}M${self.coherent_starts[0]:#x}",
                f"test_hmm.spm_addr_dev0={dev0:#x}", f"test_hmm.spm_addr_dev1={dev1:#x}"]


def memory_layout(config: MachineConfig) -> MemoryLayout:
    half = config.memory_mb // 2
    if not config.coherent_devices:
        return MemoryLayout(half, config.memory_mb - half, ())
    coherent_mb = COHERENT_CHUNK_MB * COHERENT_DEVICES
    layout = MemoryLayout(half + coherent_mb, config.memory_mb - half,
                          tuple((half + i * COHERENT_CHUNK_MB) << 20
                                for i in range(COHERENT_DEVICES)))
    if layout.total_mb >= PC_LOWMEM_LIMIT_MB:
        raise MachineError(f"memory_mb={config.memory_mb} plus {coherent_mb} MiB for the "
                           f"coherent devices must stay under {PC_LOWMEM_LIMIT_MB} MiB; "
                           "use less memory or coherent_devices=False")
    return layout


KERNEL_ARGUMENTS = (
    "console=ttyS0", "panic=-1", "nokaslr", "norandmaps", "printk.devkmsg=on",
    # Boot time under TCG (measured with benchmarks/boot.py and initcall_debug):
    # pty_init registers 256 legacy BSD pty pairs, ~0.6 s;
    "pty.legacy_count=0",
    # enabling the virtio-serial device evaluates the ACPI PCI interrupt links (LNKx):
    # ~0.8-1.5 s in virtio_pci_driver_init. The PIRQ table (SeaBIOS) routes INTx as well;
    "acpi=noirq",
    # the PS/2 mouse probe runs async for ~1 s and kernel_init waits for it
    # (async_synchronize_full) before it starts /init.
    "i8042.noaux",
    # A task blocked this long gets a hung-task report with its stack, in time to land in
    # the console before the runner's own op timeout (20 s) declares the program hung.
    # (Set from the command line so it also covers the boot itself.)
    "sysctl.kernel.hung_task_timeout_secs=10",
    # check_timer() waits a fixed number of loops for the PIT interrupt to come through the
    # IO-APIC and panics ("IO-APIC + timer doesn't work!") if it has not; a TCG guest on a
    # loaded host misses that window now and then. QEMU's timer routing is known good.
    "no_timer_check",
)


def qemu_command(bzimage: Path, initramfs: Path, workdir: Path, socket_path: Path,
                 config: MachineConfig, accel: str) -> list[str]:
    layout = memory_layout(config)
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    append = " ".join(filter(None, [
        *KERNEL_ARGUMENTS, *layout.kernel_arguments(), config.append,
    ]))
    return [
        QEMU, *accel_args,
        "-m", f"{layout.total_mb}M", "-smp", f"{config.cpus},sockets={config.cpus}",
        "-object", f"memory-backend-ram,id=m0,size={layout.node0_mb}M",
        "-object", f"memory-backend-ram,id=m1,size={layout.node1_mb}M",
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
