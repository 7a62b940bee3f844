"""Running host commands with their output kept, so a failure can be explained."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .image import KernelError

TAIL_LINES = 40


def host_env() -> dict[str, str]:
    """The caller's environment, with messages in English (we parse some of them) and
    without variables that would redirect a kernel build somewhere unexpected."""
    env = dict(os.environ, LC_ALL="C")
    for var in ("ARCH", "CROSS_COMPILE", "KBUILD_OUTPUT", "KCONFIG_CONFIG", "O"):
        env.pop(var, None)
    return env


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run(cmd: Sequence[str | os.PathLike], *, cwd: Path | None = None, what: str,
        hint: str = "") -> str:
    """Run a short command, return its stdout; on failure raise KernelError with its output."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=host_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        output = tail(proc.stdout + proc.stderr)
        raise KernelError(f"{what} failed (exit {proc.returncode}): "
                          f"{' '.join(map(str, cmd))}\n{output}" + (f"\n{hint}" if hint else ""))
    return proc.stdout


def run_logged(cmd: Sequence[str | os.PathLike], *, cwd: Path | None = None, log_file: Path,
               what: str) -> None:
    """Run a long command with its output appended to log_file (builds print megabytes);
    on failure raise KernelError quoting the log's tail."""
    argv = [str(c) for c in cmd]
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        code = subprocess.run(argv, cwd=cwd, env=host_env(), stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise KernelError(f"{what} failed (exit {code}); last lines of {log_file}:\n"
                          f"{tail(log_file.read_text(errors='replace'))}")
