"""Choosing the guest kernel: a user's bzImage or tree, a prebuilt one, a cached build, or a
fresh build of a Debian source package."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .build import build_tree, check_clean, tree_version
from .config import (BUILD_FRAGMENTS, FRAGMENT, config_version, fragment_digest,
                     fragments_text, missing_options)
from .debian import fetch_debian_source
from .hosttools import check_host_tools
from .image import KernelError, KernelImage

VERSIONS = ("6.1", "6.12", "7.2")
DEFAULT_VERSION = "7.2"  # the newest: the reference model states its semantics
PREBUILT_ENV = "HMMFUZZ_PREBUILT_KERNELS"
CACHE_ENV = "HMMFUZZ_CACHE"

Log = Callable[[str], None]
Builder = Callable[[str, Path, Log], KernelImage]


def default_cache_dir() -> Path:
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "hmmfuzz"
    return Path.home() / ".cache" / "hmmfuzz"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _fragment_key(fragments: tuple[Path, ...]) -> str:
    return fragment_digest(fragments_text(fragments))[:12]


def _matches(full_version: str | None, wanted: str) -> bool:
    """Does "6.12.117" belong to the "6.12" series?"""
    return full_version is not None and (full_version == wanted
                                         or full_version.startswith(wanted + "."))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


@contextmanager
def _locked(path: Path, log: Log) -> Iterator[None]:
    """Serialize builds of one kernel across processes (parallel CI jobs, campaign workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another hmmfuzz process is building this kernel; waiting for it ({path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield


# --- prebuilt kernels (tests and CI) -------------------------------------------------------

def find_prebuilt(version: str, prebuilt_dir: Path, fragment: Path, log: Log) -> KernelImage | None:
    """The prebuilt kernel <prebuilt_dir>/<version>/ if it fits: right version, and a
    .config holding every option of the fragment (hmm.config; the extra oracles of own
    builds are not asked for). Otherwise log why not and return None."""
    d = prebuilt_dir / version
    bzimage, config = d / "bzImage", d / ".config"
    if not (bzimage.is_file() and config.is_file()):
        log(f"no prebuilt {version} kernel: {d} lacks bzImage or .config")
        return None
    text = config.read_text(errors="replace")
    full = config_version(text)
    if full is not None and not _matches(full, version):
        log(f"prebuilt kernel {d} not used: its .config is for {full}, not {version}")
        return None
    if missing := missing_options(text, fragment.read_text()):
        log(f"prebuilt kernel {d} not used: its .config lacks {', '.join(missing)} "
            f"from {fragment}")
        return None
    return KernelImage(bzimage, config, full, "prebuilt")


# --- the build cache ----------------------------------------------------------------------

def find_cached(version: str, cache_dir: Path,
                fragments: tuple[Path, ...]) -> KernelImage | None:
    """The newest cached build of the version series with these fragments, if any."""
    key = _fragment_key(fragments)
    found = []
    for d in (cache_dir / "kernels").glob(f"*-{key}"):
        full = d.name[: -len(key) - 1]
        # bzImage is installed last, so its presence means the entry is complete.
        if _matches(full, version) and (d / "bzImage").is_file():
            found.append((_version_key(full), full, d))
    if not found:
        return None
    _, full, d = max(found)
    return KernelImage(d / "bzImage", d / ".config", full, "cache")


def _install(bzimage: Path, config: Path, dest: Path) -> None:
    shutil.copyfile(config, dest / ".config")
    partial = dest / "bzImage.partial"
    shutil.copyfile(bzimage, partial)
    partial.rename(dest / "bzImage")  # atomic: marks the cache entry complete


def build_kernel(version: str, cache_dir: Path, log: Log = print, *,
                 fragments: tuple[Path, ...] = BUILD_FRAGMENTS) -> KernelImage:
    """Fetch linux-source-<version> from Debian, build it, and cache the result under
    <cache>/kernels/<full version>-<fragment hash>/{bzImage,.config,build.log}."""
    check_host_tools(fetch=True)
    with _locked(cache_dir / "locks" / f"debian-{version}.lock", log):
        if cached := find_cached(version, cache_dir, fragments):
            return cached  # another process built it while we waited
        tree = fetch_debian_source(version, cache_dir, log)
        if not _matches(tree.version, version):
            raise KernelError(f"linux-source-{version} unpacked to {tree.path} holds kernel "
                              f"{tree.version}; delete it and try again")
        name = f"{tree.version}-{_fragment_key(fragments)}"
        dest = cache_dir / "kernels" / name
        out = cache_dir / "build" / name
        dest.mkdir(parents=True, exist_ok=True)
        log(f"building Linux {tree.version} (Debian {tree.package_version})")
        result = build_tree(tree.path, out, fragments, dest / "build.log", log)
        _install(result.bzimage, result.config, dest)
        # The objects and the unpacked tree take ~2 GB; the .deb stays for an offline rebuild.
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tree.path.parent, ignore_errors=True)
        log(f"kernel {tree.version} cached in {dest}")
        return KernelImage(dest / "bzImage", dest / ".config", tree.version, "built")


# --- a user's tree or bzImage -------------------------------------------------------------

def build_user_tree(source: Path, cache_dir: Path, log: Log = print, *,
                    fragments: tuple[Path, ...] = BUILD_FRAGMENTS) -> KernelImage:
    """Build the user's tree out of tree into <cache>/trees/<path hash>-<fragment hash>,
    incrementally each time, never writing into the tree itself."""
    src = source.resolve()
    if not src.is_dir():
        raise KernelError(f"kernel tree {source} is not a directory")
    version = tree_version(src)
    check_clean(src)
    check_host_tools(fetch=False)
    name = f"{_short_hash(str(src))}-{_fragment_key(fragments)}"
    out = cache_dir / "trees" / name
    with _locked(cache_dir / "locks" / f"tree-{name}.lock", log):
        log(f"building your tree {src} (Linux {version}) out of tree in {out}")
        result = build_tree(src, out, fragments, cache_dir / "trees" / f"{name}.build.log", log)
    return KernelImage(result.bzimage, result.config, version, "built")


def user_bzimage(bzimage: Path) -> KernelImage:
    """Take the user's bzImage as it is, after checking it is one."""
    try:
        with open(bzimage, "rb") as f:
            f.seek(0x202)
            magic = f.read(4)
    except OSError as err:
        raise KernelError(f"cannot read the bzImage {bzimage}: {err}") from err
    # An x86 boot image carries "HdrS" at 0x202; a vmlinux (ELF) does not.
    if magic != b"HdrS":
        raise KernelError(f"{bzimage} is not an x86 bzImage (no boot header); pass "
                          "arch/x86/boot/bzImage from the build, not vmlinux")
    return KernelImage(bzimage, None, None, "user-bzimage")


# --- the entry point ----------------------------------------------------------------------

def _check_version(version: str, log: Log) -> None:
    if not re.fullmatch(r"\d+\.\d+", version):
        raise KernelError(f"kernel version {version!r} should be a series like "
                          f"{', '.join(VERSIONS)}")
    if version not in VERSIONS:
        log(f"kernel {version} is not one of the versions hmmfuzz is tested with "
            f"({', '.join(VERSIONS)}); trying linux-source-{version} anyway")


def resolve_kernel(version: str | None = None, *, source: Path | None = None,
                   bzimage: Path | None = None, cache_dir: Path | None = None,
                   log: Log = print, prebuilt_dir: Path | None = None,
                   builder: Builder = build_kernel) -> KernelImage:
    """The kernel to boot.

    Precedence: bzimage (as is), source (built out of tree), then for a Debian version: a
    prebuilt kernel ($HMMFUZZ_PREBUILT_KERNELS, or prebuilt_dir) that fits, a cached build,
    a fresh build. builder is the fresh-build step (tests replace it).
    """
    if source is not None and bzimage is not None:
        raise KernelError("give either a kernel tree or a bzImage, not both")
    if bzimage is not None:
        return user_bzimage(Path(bzimage))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source is not None:
        return build_user_tree(Path(source), cache, log)
    version = version or DEFAULT_VERSION
    _check_version(version, log)
    if prebuilt_dir is None and os.environ.get(PREBUILT_ENV):
        prebuilt_dir = Path(os.environ[PREBUILT_ENV])
    if prebuilt_dir is not None:
        if found := find_prebuilt(version, Path(prebuilt_dir), FRAGMENT, log):
            return found
    if cached := find_cached(version, cache, BUILD_FRAGMENTS):
        return cached
    return builder(version, cache, log)
