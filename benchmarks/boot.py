"""Boot time of the guest, command-line and machine variants side by side (the boot goal is
<= 3 s to the runner's hello under TCG). Variants are booted in interleaved rounds so that
load from other processes on the machine hits every variant alike.

    .venv/bin/python benchmarks/boot.py [--kernel 7.2] [--rounds 3] [--variant NAME ...]

Per variant, median wall-clock seconds after QEMU starts: first console output, `Run /init`,
and the runner's hello.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

from harness.kernel import resolve_kernel
from harness.vm import qemu
from harness.vm.qemu import MachineConfig, MachineError
from harness.vm.session import KernelSession


@dataclass(frozen=True)
class Variant:
    append: str = ""
    extra_args: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()  # words of qemu.KERNEL_ARGUMENTS left out


BOOT_TIME_ARGUMENTS = ("pty.legacy_count=0", "acpi=noirq", "i8042.noaux")
VARIANTS = {
    # the command line before the boot-time arguments were added
    "before": Variant(drop=BOOT_TIME_ARGUMENTS),
    "default": Variant(),
    "no-pty-arg": Variant(drop=("pty.legacy_count=0",)),
    "no-noirq-arg": Variant(drop=("acpi=noirq",)),
    "no-noaux-arg": Variant(drop=("i8042.noaux",)),
    "+smm=off": Variant(extra_args=("-M", "pc,smm=off")),
    "+tsc=reliable": Variant(append="tsc=reliable"),
    "+loglevel=5": Variant(append="loglevel=5"),
    "q35": Variant(extra_args=("-M", "q35,smm=off,vmport=off")),
    # qboot has no PIRQ table: with acpi=noirq the virtio-serial interrupt is never routed
    "qboot": Variant(extra_args=("-bios", "qboot.rom")),
}

RUN_INIT = "Run /init as init process"


@dataclass
class Phases:
    """Wall-clock seconds after QEMU started: first console byte (firmware, loading and
    decompressing the kernel come before it), `Run /init`, the runner's hello."""

    first_output: float | None = None
    run_init: float | None = None
    hello: float = 0.0
    cpu: float = 0.0  # QEMU's CPU time (user + system) until the hello: robust to load


def _watch(console: Path, started: float, phases: Phases, stop: threading.Event):
    while not stop.is_set():
        try:
            text = console.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        now = time.monotonic() - started
        if text and phases.first_output is None:
            phases.first_output = now
        if RUN_INIT in text and phases.run_init is None:
            phases.run_init = now
            return
        time.sleep(0.01)


def boot_once(kernel, variant: Variant, workdir: Path) -> Phases | None:
    config = MachineConfig(accel="tcg", append=variant.append, extra_args=variant.extra_args)
    session = KernelSession(kernel, workdir, config, log=lambda message: None)
    phases, stop = Phases(), threading.Event()
    (workdir / "vm" / "console.log").unlink(missing_ok=True)
    watcher = threading.Thread(target=_watch, args=(workdir / "vm" / "console.log",
                                                     time.monotonic(), phases, stop))
    watcher.start()
    kept = tuple(word for word in qemu.KERNEL_ARGUMENTS if word not in variant.drop)
    try:
        try:
            with patch.object(qemu, "KERNEL_ARGUMENTS", kept):
                session.start()
        except MachineError as error:
            print(f"{workdir.name}: did not boot: {str(error).splitlines()[0]}")
            return None
        phases.hello = session.machine.boot_seconds
        phases.cpu = _cpu_seconds(session.machine.process.pid)
        return phases
    finally:
        stop.set()
        watcher.join()
        session.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    args = parser.parse_args()
    kernel = resolve_kernel(args.kernel)
    names = args.variant or list(VARIANTS)
    runs: dict[str, list[Phases]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            phases = boot_once(kernel, VARIANTS[name], Path("/tmp/hmmfuzz-bench-boot") / name)
            if phases is not None:
                runs[name].append(phases)
    print(f"kernel {args.kernel}, TCG, {args.rounds} interleaved rounds; "
          "medians in s after QEMU starts")
    print(f"{'variant':14} {'1st output':>10} {'/init':>6} {'hello':>6} {'min hello':>9} "
          f"{'QEMU CPU s':>10}")
    for name in names:
        phases = runs[name]
        if not phases:
            print(f"{name:14} never booted")
            continue
        print(f"{name:14} {_median(p.first_output for p in phases):10.2f} "
              f"{_median(p.run_init for p in phases):6.2f} {_median(p.hello for p in phases):6.2f} "
              f"{min(p.hello for p in phases):9.2f} {_median(p.cpu for p in phases):10.2f}  "
              f"{VARIANTS[name].append} {' '.join(VARIANTS[name].extra_args)}"
              + (f" without {' '.join(VARIANTS[name].drop)}" if VARIANTS[name].drop else ""))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(values) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")

if __name__ == "__main__":
    main()
