"""Read C headers with cffi, so Python and C share one definition of each struct and number.

cffi's cdef() understands declarations and `#define NAME <integer>` but not the rest of the
preprocessor; the headers we share are written (or, for the kernel's, already are) so that
dropping every other preprocessor line leaves valid declarations.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import cffi

INTEGER_DEFINE = re.compile(r"#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*$")
# Kernel uapi types, for headers that use them
KERNEL_TYPES = "typedef uint64_t __u64; typedef uint32_t __u32; typedef uint8_t __u8;\n"


def cdef_source(path: Path) -> str:
    kept = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not INTEGER_DEFINE.match(stripped):
            continue
        kept.append(line)
    return "\n".join(kept)


@cache
def load_headers(*paths: Path) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(KERNEL_TYPES + "\n".join(cdef_source(Path(p)) for p in paths))
    return ffi
