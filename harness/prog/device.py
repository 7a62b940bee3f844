"""The HMM test device's ABI, read from the kernel's own header (lib/test_hmm_uapi.h, copied
beside this file and compiled into the runner) so the model and the runner agree on it."""

from __future__ import annotations

from pathlib import Path

from .cheaders import load_headers

UAPI_HEADER = Path(__file__).with_name("test_hmm_uapi.h")
_abi = load_headers(UAPI_HEADER).dlopen(None)

# SNAPSHOT codes (dmirror_mkentry in lib/test_hmm.c)
PROT_ERROR = _abi.HMM_DMIRROR_PROT_ERROR
PROT_NONE = _abi.HMM_DMIRROR_PROT_NONE
PROT_READ = _abi.HMM_DMIRROR_PROT_READ
PROT_WRITE = _abi.HMM_DMIRROR_PROT_WRITE
PROT_PMD = _abi.HMM_DMIRROR_PROT_PMD
PROT_PUD = _abi.HMM_DMIRROR_PROT_PUD
PROT_ZERO = _abi.HMM_DMIRROR_PROT_ZERO
PROT_DEV_PRIVATE_LOCAL = _abi.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL
PROT_DEV_PRIVATE_REMOTE = _abi.HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE
PROT_DEV_COHERENT_LOCAL = _abi.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL
PROT_DEV_COHERENT_REMOTE = _abi.HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE

_NAMES = {
    PROT_ERROR: "ERROR", PROT_ZERO: "ZERO", PROT_DEV_PRIVATE_LOCAL: "DEV_PRIVATE_LOCAL",
    PROT_DEV_PRIVATE_REMOTE: "DEV_PRIVATE_REMOTE", PROT_DEV_COHERENT_LOCAL: "DEV_COHERENT_LOCAL",
    PROT_DEV_COHERENT_REMOTE: "DEV_COHERENT_REMOTE",
}


def describe_snapshot(code: int) -> str:
    """e.g. 0x11 -> 'ZERO|READ', 0x02 -> 'WRITE', 0x00 -> 'NONE'."""
    if code == PROT_ERROR:
        return "ERROR"
    kind = code & 0xF0
    parts = [_NAMES[kind]] if kind in _NAMES else ([f"{kind:#x}"] if kind else [])
    for bit, name in ((PROT_READ, "READ"), (PROT_WRITE, "WRITE"), (PROT_PMD, "PMD"), (PROT_PUD, "PUD")):
        if code & bit:
            parts.append(name)
    return "|".join(parts) or "NONE"
