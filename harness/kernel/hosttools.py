"""Checking up front that the host can build a kernel, rather than failing 5 minutes in."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from .image import KernelError

# Program -> the Debian package that provides it.
BUILD_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc"}
FETCH_TOOLS = {"apt-get": "apt", "dpkg-deb": "dpkg", "xz": "xz-utils", "tar": "tar"}
# Header -> package. objtool needs libelf; certificate signing tools need OpenSSL.
BUILD_HEADERS = {"libelf.h": "libelf-dev", "openssl/ssl.h": "libssl-dev"}
INCLUDE_DIRS = (Path("/usr/include"), Path(f"/usr/include/{platform.machine()}-linux-gnu"))


def _missing_programs(tools: dict[str, str]) -> dict[str, str]:
    return {tool: pkg for tool, pkg in tools.items() if shutil.which(tool) is None}


def _missing_headers(headers: dict[str, str]) -> dict[str, str]:
    return {h: pkg for h, pkg in headers.items()
            if not any((d / h).is_file() for d in INCLUDE_DIRS)}


def check_host_tools(*, fetch: bool) -> None:
    """Raise KernelError naming every missing tool and the packages that provide them.

    fetch: also check what fetching and unpacking a Debian source package needs.
    """
    if platform.machine() != "x86_64":
        raise KernelError(
            f"building the x86_64 guest kernel on a {platform.machine()} host is not supported "
            "(it would need a cross compiler); build it elsewhere and pass its bzImage instead")
    missing = _missing_programs(BUILD_TOOLS) | _missing_headers(BUILD_HEADERS)
    if fetch:
        missing |= _missing_programs(FETCH_TOOLS)
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise KernelError(
            f"cannot build a kernel: missing {', '.join(missing)}. "
            f"On Debian/Ubuntu: sudo apt-get install {packages} "
            "(or pass a prebuilt bzImage instead)")
