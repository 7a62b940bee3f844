"""Running programs on a real kernel: a booted guest that survives crashes of its kernel.

`KernelSession.run(program)` returns the program's Trace. A panic, a lost channel or a hang
ends the program's trace there (with the console slice kept); the guest is restarted
before the next program, so nothing one program does leaks into the next.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.kernel import REQUIRED_OPTIONS, KernelImage, default_cache_dir, parse_config
from harness.kernel.config import FRAGMENT, OPTIONAL_ORACLES, missing_options
from harness.prog import Ending, MemoryCheck, OpResult, Program, Trace
from harness.runner import build, wire

from .console import find_reports
from .qemu import ChannelLost, Machine, MachineConfig, MachineError, kvm_usable


class MissingKernelOption(MachineError):
    """The guest kernel lacks an option hmmfuzz cannot run without (named in the message)."""


class RunnerFailure(MachineError):
    """The in-guest runner gave up (it prints why and powers the guest off): a harness
    problem, never a kernel finding."""


RUNNER_FATAL = "hmmfuzz-runner: fatal: "


@dataclass(frozen=True)
class RunInfo:
    """Facts of one program's run that are about the run, not the kernel's behaviour."""

    died_signal: int = 0   # the process running the last op died by this signal
    seconds: float = 0.0
    inherited_crash: bool = False  # the guest was already dying of the request before


@dataclass(frozen=True)
class Execution:
    """How an executable run in the guest ended: its wait status (None when the guest
    crashed or hung under it, or -1 when it could not be started), its output, the console."""

    status: int | None
    output: str
    ending: Ending
    console: str

    @property
    def exit_code(self) -> int | None:
        if self.status is None or self.status < 0 or not os.WIFEXITED(self.status):
            return None
        return os.WEXITSTATUS(self.status)


class KernelSession:
    def __init__(self, kernel: KernelImage, workdir: Path, config: MachineConfig = MachineConfig(),
                 op_timeout_ms: int = 20000, cache_dir: Path | None = None, log=print):
        self.kernel, self.workdir, self.config = kernel, workdir, config
        self.op_timeout_ms = op_timeout_ms
        self._oracles_said_off: set[str] = set()
        self.cache_dir = cache_dir or default_cache_dir()
        self.log = log
        self.machine: Machine | None = None
        self.hello: wire.Hello | None = None
        self.serial = 0
        self.restarts = 0
        self.last_info = RunInfo()
        self._previous_start: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> wire.Hello:
        self._previous_start = None  # console offset where the last request began
        initramfs = build.initramfs(self.cache_dir)
        accel = self._accel()
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            self.machine = Machine(self.kernel.bzimage, initramfs, self.workdir / "vm",
                                   self.config, accel)
            try:
                self.hello = self.machine.start()
                break
            except MachineError:
                if attempt == BOOT_ATTEMPTS or "Kernel panic" not in self.machine.console():
                    raise
                kept = self.workdir / "vm" / f"boot-panic-{self.restarts}-{attempt}.log"
                kept.write_text(self.machine.console())
                self.log(f"the guest panicked while booting (console kept in {kept}); "
                         "booting it again")
        self._check_guest(self.hello)
        return self.hello

    def _accel(self) -> str:
        choice = os.environ.get("HMMFUZZ_ACCEL", self.config.accel)
        if choice != "auto":
            return choice
        if not kvm_usable():
            return "tcg"
        # /dev/kvm may belong to a hypervisor a stock guest hangs under: try it once per
        # host boot and remember the answer.
        marker = self.cache_dir / f"accel-{_boot_id()}"
        if marker.exists():
            return marker.read_text().strip()
        probe = Machine(self.kernel.bzimage, build.initramfs(self.cache_dir),
                        self.workdir / "kvm-probe",
                        MachineConfig(**{**self.config.__dict__, "boot_timeout": 30.0}), "kvm")
        try:
            probe.start()
            answer = "kvm"
        except MachineError:
            answer = "tcg"
            self.log("KVM did not boot the guest within 30 s: using TCG")
        finally:
            probe.stop()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(answer)
        return answer

    def _check_guest(self, hello: wire.Hello):
        if not hello.config_gz:
            raise MissingKernelOption("the guest kernel has no /proc/config.gz: set CONFIG_IKCONFIG=y "
                                      "and CONFIG_IKCONFIG_PROC=y so hmmfuzz can check its config")
        config_text = gzip.decompress(hello.config_gz).decode(errors="replace")
        options = parse_config(config_text)
        missing = [name for name in REQUIRED_OPTIONS if options.get(name, "n") == "n"]
        if missing:
            raise MissingKernelOption(f"the guest kernel {hello.release} lacks {', '.join(missing)}")
        if not {0, 1} <= hello.devices:
            raise MissingKernelOption(f"/dev/hmm_dmirror0 and 1 are missing in the guest "
                                      f"(CONFIG_TEST_HMM, CONFIG_DEVICE_PRIVATE)")
        if self.config.coherent_devices and not {2, 3} <= hello.devices:
            console = self.machine.console_path if self.machine else "the guest's console"
            self.log("note: /dev/hmm_dmirror2 and 3 (device-coherent) are missing: test_hmm "
                     f"did not take the reserved memory (see {console})")
        weaker = missing_options(config_text, FRAGMENT.read_text())
        if weaker:
            self.log(f"note: the guest kernel lacks fragment options {', '.join(weaker)}; "
                     "some oracles or ops may be unavailable")
        for oracle, (needed, where) in OPTIONAL_ORACLES.items():
            lacking = [o for o in needed if options.get(o, "n") == "n"]
            if lacking and oracle not in self._oracles_said_off:  # once, not at every reboot
                self._oracles_said_off.add(oracle)
                self.log(f"note: {oracle} is off: the guest kernel lacks {', '.join(lacking)}; "
                         f"{where}")

    def close(self):
        if self.machine is not None:
            if self.machine.alive():
                try:
                    self.machine.send(wire.frame(wire.C.MSG_POWEROFF))
                except ChannelLost:
                    pass
            self.machine.stop()
            self.machine = None

    def __enter__(self):
        if self.machine is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def _ensure_running(self):
        if self.machine is None or not self.machine.alive():
            if self.machine is not None:
                self.machine.stop()
                self.restarts += 1
            self.start()

    # ------------------------------------------------------------------ programs

    def run(self, program: Program) -> Trace:
        """Run the program; if the guest died of the program before it (its report began
        before this one was sent), run it again on the fresh guest: that crash is not
        this program's, and it was recorded with the program that caused it."""
        budget = len(program.ops) * self.op_timeout_ms / 1000 + 30
        trace = self._exchange(wire.encode_program(program, self.serial + 1, self.op_timeout_ms), budget)
        if self.last_info.inherited_crash:
            trace = self._exchange(wire.encode_program(program, self.serial + 1, self.op_timeout_ms), budget)
        return trace

    def bench(self, program: Program, repeat: int) -> tuple[float, int]:
        """Run the program `repeat` times inside the guest with nothing reported per op:
        the raw C loop the harness's overhead is measured against. Returns (guest seconds,
        failed runs)."""
        self._ensure_running()
        request = wire.encode_program(program, self.serial + 1, self.op_timeout_ms, repeat)
        self.machine.send(request)
        budget = repeat * (len(program.ops) * self.op_timeout_ms / 1000 + 30)
        msg_type, payload = self.machine.receive(budget)
        if msg_type != wire.C.MSG_BENCH_DONE:
            raise wire.ProtocolError(f"expected MSG_BENCH_DONE, got message type {msg_type}")
        seconds, _, failed = wire.decode_bench_done(payload)
        return seconds, failed

    def provoke(self, crash_type: str, timeout: float = 60) -> Trace:
        """Make the guest kernel misbehave through LKDTM (e.g. "WARNING", "BUG",
        "SOFTLOCKUP"), to test the console oracle on real reports."""
        return self._exchange(wire.frame(wire.C.MSG_PROVOKE, crash_type.encode()), timeout)

    def _exchange(self, request: bytes, budget: float) -> Trace:
        """Send one request and collect results until DONE, or until the guest is lost."""
        self._ensure_running()
        self.serial += 1
        machine = self.machine
        console_start = machine.console_size()
        started = time.monotonic()
        results: dict[int, OpResult] = {}
        ending, died, memory, no_process = Ending.COMPLETED, 0, None, 0
        try:
            machine.send(request)
            while True:
                msg_type, payload = machine.receive(budget - (time.monotonic() - started))
                if msg_type == wire.C.MSG_RESULT:
                    index, result = wire.decode_result(payload)
                    results[index] = result
                    continue
                if msg_type != wire.C.MSG_DONE:
                    raise wire.ProtocolError(f"unexpected message type {msg_type}")
                done = wire.decode_done(payload)
                memory = self._second_reading(machine, done.memory, budget, started)
                if done.status in (wire.C.DONE_HUNG, wire.C.DONE_UNKILLABLE):
                    ending = Ending.HUNG
                elif done.status == wire.C.DONE_DIED:
                    ending, died = Ending.DIED, done.detail
                elif done.status == wire.C.DONE_BAD_PROGRAM:
                    raise wire.ProtocolError(f"the runner refused op {done.failed_op}")
                elif done.status == wire.C.DONE_NO_PROCESS:
                    no_process = done.detail
                break
        except ChannelLost:
            ending = Ending.CRASHED if machine.exits_within(2.0) else Ending.HUNG
        inherited = False
        if ending in (Ending.CRASHED, Ending.HUNG):
            self._give_up(machine, console_start)
            inherited = self._crash_began_before(machine, console_start)
        console = machine.console(console_start)
        if no_process:
            inherited = self._broken_guest(machine, no_process)
        elif ending is Ending.COMPLETED and find_reports(console):
            # The kernel warned or reported and lives on, tainted: the next program gets a
            # fresh guest, so what it sees is its own doing.
            machine.stop()
        self._previous_start = console_start
        self.last_info = RunInfo(died_signal=died, seconds=time.monotonic() - started,
                                 inherited_crash=inherited)
        ordered = tuple(results[i] for i in range(len(results)))
        return Trace(kernel_release=self.hello.release, results=ordered, ending=ending,
                     console=console, memory=memory)

    @staticmethod
    def _second_reading(machine: Machine, memory: MemoryCheck | None, budget: float,
                        started: float) -> MemoryCheck | None:
        """The counters read again when the first reading after the program looks like a
        leak (MemoryCheck.needs_second_reading): only a leak is in both."""
        if memory is None or not memory.needs_second_reading():
            return memory
        machine.send(wire.frame(wire.C.MSG_REMEASURE))
        msg_type, payload = machine.receive(budget - (time.monotonic() - started))
        if msg_type != wire.C.MSG_MEMORY:
            raise wire.ProtocolError(f"expected MSG_MEMORY, got message type {msg_type}")
        return dataclasses.replace(memory, again=wire.decode_memory(payload))

    def execute(self, executable: bytes, budget: float = 300) -> Execution:
        """Run a static executable (a C reproducer) once in the guest, as the runner's child."""
        self._ensure_running()
        self.serial += 1
        machine = self.machine
        console_start = machine.console_size()
        try:
            machine.send(wire.frame(wire.C.MSG_EXEC, executable))
            msg_type, payload = machine.receive(budget)
            if msg_type != wire.C.MSG_EXEC_DONE:
                raise wire.ProtocolError(f"expected MSG_EXEC_DONE, got message type {msg_type}")
            status, output = wire.decode_exec_done(payload)
            self._previous_start = console_start
            return Execution(status, output.decode(errors="replace"), Ending.COMPLETED,
                             machine.console(console_start))
        except ChannelLost:
            ending = Ending.CRASHED if machine.exits_within(2.0) else Ending.HUNG
            self._give_up(machine, console_start)
            return Execution(None, "", ending, machine.console(console_start))

    def _broken_guest(self, machine: Machine, err: int) -> bool:
        """The kernel would not fork the program's first process: a program before this one
        broke the guest (its memory, say). Start afresh and run again; a fresh guest that
        cannot either is an infrastructure failure."""
        machine.stop()
        if self._previous_start is None:
            raise RunnerFailure(f"a fresh guest cannot fork a program process: {os.strerror(err)} "
                                f"(console: {machine.console_path})")
        self.log(f"the guest could not fork ({os.strerror(err)}): restarting it")
        return True

    def _crash_began_before(self, machine: Machine, start: int) -> bool:
        """Whether the report the guest died with began before `start`: the serial console
        lags the runner's channel, so the request before can have reported DONE while its
        oops was still printing, and the guest died under this request without it."""
        if self._previous_start is None:
            return False
        before = machine.console(self._previous_start)
        lines_before = before[: start - self._previous_start].count("\n")
        return any(report.fatal and report.line < lines_before for report in find_reports(before))

    def _give_up(self, machine: Machine, console_start: int):
        """The guest crashed or hung: keep its last words, stop it (the next request boots a
        fresh one), and tell a runner failure apart from a kernel one."""
        self._settle_console(machine)
        machine.stop()
        console = machine.console(console_start)
        if RUNNER_FATAL in console:
            reason = console.split(RUNNER_FATAL, 1)[1].splitlines()[0]
            raise RunnerFailure(f"the guest runner failed: {reason} (console: {machine.console_path})")

    @staticmethod
    def _settle_console(machine: Machine):
        """Give a dying guest a moment to finish printing its report."""
        deadline = time.monotonic() + 3
        size = -1
        while time.monotonic() < deadline and size != machine.console_size():
            size = machine.console_size()
            time.sleep(0.3)


# A guest that panics while booting is booted again this many times in all before the
# failure is the user's: under TCG on a loaded host a boot can fail once for the host's
# sake; a kernel that cannot boot panics every time.
BOOT_ATTEMPTS = 3


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
