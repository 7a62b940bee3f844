"""Build the static runner with the system gcc and pack it as the initramfs's /init."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.prog.device import UAPI_HEADER

from .wire import WIRE_FINGERPRINT, WIRE_HEADER

RUNNER_SOURCE = Path(__file__).with_name("runner.c")
KERNEL_OPS_HEADER = Path(__file__).with_name("kernel_ops.h")  # shared with C reproducers
SOURCES = (RUNNER_SOURCE, KERNEL_OPS_HEADER, WIRE_HEADER, UAPI_HEADER)


class RunnerBuildError(Exception):
    pass


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _require(tool: str, package: str):
    if shutil.which(tool) is None:
        raise RunnerBuildError(f"`{tool}` not found: install the Debian package {package}")


def compile_runner(output: Path):
    _require("gcc", "gcc")
    command = ["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(output),
               f"-DWIRE_FINGERPRINT={WIRE_FINGERPRINT:#x}U",
               f"-I{WIRE_HEADER.parent}", f"-I{UAPI_HEADER.parent}", str(RUNNER_SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RunnerBuildError(f"compiling the runner failed ({' '.join(command)}):\n"
                               f"{result.stderr}\n(static linking needs libc6-dev)")


def pack_initramfs(init: Path, output: Path):
    """A newc cpio archive holding just /init: the runner makes the rest at boot."""
    _require("cpio", "cpio")
    with tempfile.TemporaryDirectory() as root:
        shutil.copy(init, Path(root, "init"))
        Path(root, "init").chmod(0o755)
        with open(output, "wb") as archive:
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], input=b"init\n",
                           stdout=archive, cwd=root, check=True)


def initramfs(cache_dir: Path) -> Path:
    """The initramfs for the current runner sources, built once per change of them."""
    target = cache_dir / "runner" / f"initramfs-{_fingerprint()}.cpio"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            binary = Path(work, "runner")
            compile_runner(binary)
            pack_initramfs(binary, Path(work, "initramfs.cpio"))
            shutil.move(Path(work, "initramfs.cpio"), target)
    return target
