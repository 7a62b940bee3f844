"""What the rest of hmmfuzz gets from this package: a bootable kernel, or a clear error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class KernelError(Exception):
    """Obtaining a kernel failed; the message says what went wrong and what to do."""


@dataclass(frozen=True)
class KernelImage:
    bzimage: Path
    # Full .config when known (built or prebuilt); None for a user's bzImage, whose guest
    # reports its own config through /proc/config.gz.
    config: Path | None
    # Exact kernel version ("7.2.13") when known.
    version: str | None
    # "prebuilt" | "cache" | "built" | "user-bzimage"
    origin: str
