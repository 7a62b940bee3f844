"""Fetching kernel sources as Debian `linux-source-X.Y` packages.

Stable kernels come from the machine's configured suites. Newer ones (7.2) come from
Debian unstable through a private apt configuration kept in our cache: its own sources
list, package lists and apt cache, so the system's apt setup is never changed and no root
is needed.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .build import tree_version
from .image import KernelError
from .proc import run, run_logged

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
UNSTABLE = "sid"


@dataclass(frozen=True)
class Apt:
    """One apt configuration: the system's (no options) or a private one."""

    name: str
    options: tuple[str, ...] = ()

    def get(self, *args: str) -> list[str]:
        return ["apt-get", *self.options, *args]

    def cache(self, *args: str) -> list[str]:
        return ["apt-cache", *self.options, *args]


@dataclass(frozen=True)
class SourceTree:
    path: Path                    # the unpacked kernel tree
    version: str                  # from its Makefile, "6.12.117"
    package_version: str | None   # the Debian version, "6.12.117-1~deb12u1"


def debian_mirror(sources: Path = DEBIAN_SOURCES) -> str:
    """The Debian archive URI this machine already uses (first non-security deb822 stanza),
    so the private configuration talks to the same (possibly local) mirror."""
    try:
        text = sources.read_text()
    except OSError:
        return DEFAULT_MIRROR
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
        suites = fields.get("Suites", "").split()
        uris = fields.get("URIs", "").split()
        if uris and suites and not all(s.endswith("-security") for s in suites):
            return uris[0]
    return DEFAULT_MIRROR


def unstable_apt(root: Path, log: Callable[[str], None]) -> Apt:
    """A private apt configuration for Debian unstable under root, with fresh lists."""
    if not KEYRING.is_file():
        raise KernelError(f"{KEYRING} is missing, so packages from Debian unstable cannot be "
                          "verified; install debian-archive-keyring, or pass a kernel tree "
                          "or a bzImage instead")
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    sources = root / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {mirror} {UNSTABLE} main\n")
    apt = Apt(f"Debian {UNSTABLE} ({mirror})", (
        "-o", f"Dir::Etc::SourceList={sources}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
    ))
    log(f"updating the package lists of {apt.name} in {root}")
    run(apt.get("update"), what=f"apt-get update for {apt.name}",
        hint="check the network connection, or pass a kernel tree or a bzImage instead")
    return apt


def candidate(apt: Apt, package: str) -> str | None:
    """The version apt would fetch for package, or None when apt does not know it."""
    out = run(apt.cache("policy", package), what=f"apt-cache policy {package}")
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.MULTILINE)
    return m.group(1) if m and m.group(1) != "(none)" else None


def deb_path(debs: Path, package: str, version: str) -> Path:
    # apt-get download escapes an epoch's colon in the file name.
    return debs / f"{package}_{version.replace(':', '%3a')}_all.deb"


def download(apt: Apt, package: str, version: str, debs: Path,
             log: Callable[[str], None]) -> Path:
    """Fetch package=version into debs (once: a complete .deb is kept and reused)."""
    final = deb_path(debs, package, version)
    if final.is_file():
        log(f"using {final} (already downloaded)")
        return final
    # Download into partial/ and move when complete, so an interrupted download is never
    # mistaken for a package.
    partial = debs / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package} {version} from {apt.name} (about 150 MB)")
    run(apt.get("download", f"{package}={version}"), cwd=partial,
        what=f"downloading {package}", hint="check the network connection")
    got = deb_path(partial, package, version)
    if not got.is_file():
        raise KernelError(f"apt-get download {package}={version} succeeded but {got} "
                          f"does not exist; check the files in {partial}")
    got.rename(final)
    return final


def _sources(cache: Path, log: Callable[[str], None]) -> Iterator[Apt]:
    yield Apt("the system's apt sources")
    yield unstable_apt(cache / "apt-unstable", log)  # only built if the system lacks it


def fetch_package(package: str, cache: Path, log: Callable[[str], None]) -> Path:
    """The newest .deb of package: the system's suites first, then Debian unstable;
    with no network, fall back to a .deb downloaded earlier."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        for apt in _sources(cache, log):
            if version := candidate(apt, package):
                return download(apt, package, version, debs, log)
            log(f"{package} is not available from {apt.name}")
    except KernelError as err:
        if earlier := _newest(debs.glob(f"{package}_*.deb")):
            log(f"could not fetch {package} ({err}); using {earlier} downloaded earlier")
            return earlier
        raise
    raise KernelError(f"no apt source offers {package} (tried the system's sources and Debian "
                      f"{UNSTABLE}); run 'apt-get update' if your lists are stale, choose "
                      "another version, or pass a kernel tree or a bzImage instead")


def _newest(paths: Iterator[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def unpack(deb: Path, dest_root: Path, log: Callable[[str], None]) -> Path:
    """Unpack the kernel tree held in deb (as /usr/src/linux-source-X.Y.tar.xz) into
    dest_root/<deb name>/, once; return the tree's top directory."""
    dest = dest_root / deb.stem
    if not dest.is_dir():
        tmp = dest_root / f"{deb.stem}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log(f"unpacking {deb.name} into {dest}")
        # Stream the inner tarball straight through: no 150 MB intermediate file.
        script = (f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))}"
                  " | tar -xOf - --wildcards './usr/src/linux-source-*.tar.xz'"
                  f" | tar -xJf - -C {shlex.quote(str(tmp))}")
        log_file = dest_root / f"{deb.stem}.unpack.log"
        log_file.write_text("")
        run_logged(["bash", "-o", "pipefail", "-c", script], log_file=log_file,
                   what=f"unpacking {deb}")
        tmp.rename(dest)  # only a complete tree gets its final name
        log_file.unlink()
    trees = [p for p in dest.iterdir() if (p / "Makefile").is_file()]
    if len(trees) != 1:
        raise KernelError(f"{dest} should hold exactly one kernel tree, found {len(trees)}; "
                          "delete it and try again")
    return trees[0]


def package_version(deb: Path) -> str:
    """"linux-source-6.12_6.12.117-1~deb12u1_all.deb" -> "6.12.117-1~deb12u1"."""
    return deb.name.split("_")[1].replace("%3a", ":")


def fetch_debian_source(version: str, cache: Path, log: Callable[[str], None]) -> SourceTree:
    """Download (or reuse) and unpack linux-source-<version>."""
    deb = fetch_package(f"linux-source-{version}", cache, log)
    tree = unpack(deb, cache / "src", log)
    return SourceTree(tree, tree_version(tree), package_version(deb))
