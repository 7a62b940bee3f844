"""Capture real kernel console reports for the console parser's tests.

    .venv/bin/python tests/data/consoles/capture.py 7.2 boot WARNING BUG SOFTLOCKUP ...

Boots /work/shared/kernels/<version>/bzImage (or $HMMFUZZ_PREBUILT_KERNELS/<version>) under
TCG and, for each LKDTM crash type named, writes it to provoke-crash/DIRECT and stores the
console slice of that request as tests/data/consoles/<version>/<TYPE>.log. `boot` stores the
boot log of a fresh guest. A crash type that kills the guest makes the session boot a new
one before the next type.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from harness.kernel import KernelImage  # noqa: E402
from harness.vm.qemu import MachineConfig  # noqa: E402
from harness.vm.session import KernelSession  # noqa: E402

# Crash types that leave the writer stuck: the detectors need their threshold to fire.
SLOW = {"SOFTLOCKUP": 75, "HUNG_TASK": 75, "HARDLOCKUP": 75, "LOOP": 75, "SPINLOCKUP": 75,
        "SMP_CALL_LOCKUP": 75}


def main(version: str, types: list[str]):
    kernels = Path(os.environ.get("HMMFUZZ_PREBUILT_KERNELS", HERE.parents[3] / "shared" / "kernels"))
    kernel = KernelImage(kernels / version / "bzImage", None, None, "prebuilt")
    out = HERE / version
    out.mkdir(exist_ok=True)
    workdir = Path(f"/tmp/hmmfuzz-capture-{version}")
    with KernelSession(kernel, workdir, MachineConfig(accel="tcg")) as session:
        for crash_type in types:
            if crash_type == "boot":
                session._ensure_running()
                (out / "boot.log").write_text(session.machine.console(0))
                print(f"{version} boot: {session.machine.boot_seconds:.1f} s", flush=True)
                continue
            started = time.monotonic()
            trace = session.provoke(crash_type, timeout=SLOW.get(crash_type, 30))
            if crash_type == "SPINLOCKUP" and trace.ending.name == "COMPLETED":
                trace = session.provoke(crash_type, timeout=SLOW[crash_type])
            (out / f"{crash_type}.log").write_text(trace.console)
            print(f"{version} {crash_type}: {trace.ending.name} in {time.monotonic() - started:.1f} s, "
                  f"{len(trace.console.splitlines())} lines", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
