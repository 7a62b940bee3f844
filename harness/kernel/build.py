"""Configuring and building a kernel tree, always out of tree (make O=...).

Out of tree because a user's tree must never be written to, and so that a Debian tree and a
user's tree go through exactly the same recipe:

    make tinyconfig
    scripts/kconfig/merge_config.sh -m .config FRAGMENT
    make olddefconfig
    make -j$(nproc+1) bzImage
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import REQUIRED_OPTIONS, describe_missing, fragments_text, missing_options
from .image import KernelError
from .proc import run_logged


@dataclass(frozen=True)
class BuildOutput:
    bzimage: Path
    config: Path
    log_file: Path


def tree_version(tree: Path) -> str:
    """"6.12.117" from the tree's Makefile, as the kernel's own KERNELVERSION spells it."""
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:2000]
    except OSError as err:
        raise KernelError(f"{tree} is not a kernel tree (no readable Makefile: {err})") from err
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=[ \t]*(.*)$",
                             head, re.MULTILINE))
    if not fields.get("VERSION") or not fields.get("PATCHLEVEL"):
        raise KernelError(f"{tree}/Makefile has no VERSION/PATCHLEVEL: is it a kernel tree?")
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields.get("SUBLEVEL"):
        version += f".{fields['SUBLEVEL']}"
    return version + fields.get("EXTRAVERSION", "").strip()


def jobs() -> int:
    # One more job than CPUs keeps the CPUs busy while a job waits on the disk.
    return len(os.sched_getaffinity(0)) + 1


def _make(src: Path, out: Path, *targets: str) -> list[str]:
    # ARCH=x86 is what kbuild picks by itself on an x86_64 host, and what the shared prebuilt
    # kernels were built with. It is not the same as ARCH=x86_64: with ARCH=x86, tinyconfig
    # starts from a 32-bit allnoconfig, so once the fragment sets 64BIT the 64-bit-only options
    # take their defaults (5-level paging, VMAP_STACK, PKEYS, vsyscall emulation, IBT on)
    # instead of being forced off. Explicit, so the caller's environment cannot change it.
    return ["make", "-C", str(src), f"O={out}", "ARCH=x86", *targets]


def check_clean(src: Path) -> None:
    # Kbuild refuses O= builds of a tree that has been configured in place; say so before
    # starting, with the fix.
    if (src / ".config").exists() or (src / "include/config").is_dir():
        raise KernelError(f"{src} has been configured or built in place (it has a .config); "
                          "hmmfuzz builds out of tree and never writes into your tree. Run "
                          f"'make -C {src} mrproper' (this deletes your in-tree build), or "
                          "build it yourself and pass the bzImage instead")


def configure(src: Path, out: Path, fragments: tuple[Path, ...], log_file: Path) -> None:
    """Write out/.config: tinyconfig + the fragments, completed by olddefconfig."""
    run_logged(_make(src, out, "tinyconfig"), log_file=log_file, what="make tinyconfig")
    # merge_config.sh puts its temporary files in the current directory: run it in out/.
    merge = [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", ".", ".config",
             *(str(f) for f in fragments)]
    run_logged(merge, cwd=out, log_file=log_file, what="merging the config fragments")
    run_logged(_make(src, out, "olddefconfig"), log_file=log_file, what="make olddefconfig")


def check_config(config_text: str, fragment_text: str, log: Callable[[str], None]) -> None:
    """Log every fragment option olddefconfig dropped; fail if the kernel would be useless."""
    dropped = describe_missing(config_text, fragment_text)
    if dropped:
        log(f"{len(dropped)} fragment option(s) did not survive olddefconfig: "
            + ", ".join(dropped))
    missing = set(missing_options(config_text, fragment_text))
    fatal = [o for o in REQUIRED_OPTIONS if o in missing]
    if fatal:
        raise KernelError("this kernel cannot run hmmfuzz: olddefconfig dropped "
                          f"{', '.join(fatal)} (their dependencies are off or they do not exist "
                          "in this version); fix the config fragment or use another kernel")


def build_tree(src: Path, out: Path, fragments: tuple[Path, ...], log_file: Path,
               log: Callable[[str], None]) -> BuildOutput:
    """Configure and build src into out (incremental when out already holds a build)."""
    check_clean(src)
    out.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    configure(src, out, fragments, log_file)
    config = out / ".config"
    check_config(config.read_text(), fragments_text(fragments), log)
    first = not (out / "vmlinux").exists()
    log(f"building bzImage with {jobs()} jobs in {out} (log: {log_file})"
        + ("; a first build takes about 10 minutes on 2 cores" if first else ""))
    run_logged(_make(src, out, f"-j{jobs()}", "bzImage"), log_file=log_file,
               what="the kernel build")
    bzimage = out / "arch/x86/boot/bzImage"
    if not bzimage.is_file():
        raise KernelError(f"the build succeeded but left no {bzimage}; see {log_file}")
    return BuildOutput(bzimage, config, log_file)
