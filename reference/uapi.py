"""SNAPSHOT protection bytes of the HMM test device (enum HMM_DMIRROR_PROT_* in
lib/test_hmm_uapi.h), as harness.prog.device reads them from the kernel's header. The model
uses only the names below; dmirror_mkentry() in lib/test_hmm.c builds one byte per page."""

from harness.prog.device import (
    PROT_DEV_COHERENT_LOCAL, PROT_DEV_COHERENT_REMOTE, PROT_DEV_PRIVATE_LOCAL, PROT_ERROR, PROT_NONE, PROT_PMD, PROT_READ, PROT_WRITE, PROT_ZERO,
    describe_snapshot,
)

__all__ = ["FAIL_ALLOC", "PROT_DEV_COHERENT_LOCAL", "PROT_DEV_COHERENT_REMOTE",
           "PROT_DEV_PRIVATE_LOCAL", "PROT_ERROR", "PROT_NONE", "PROT_PMD", "PROT_READ",
           "PROT_WRITE", "PROT_ZERO", "prot_name"]

FAIL_ALLOC = 1      # HMM_DMIRROR_FLAG_FAIL_ALLOC, bit 0 of HMM_DMIRROR_FLAGS


def prot_name(byte: int) -> str:
    """`0x11 (ZERO|READ)`: a snapshot byte as a person reads it."""
    return f"{byte:#04x} ({describe_snapshot(byte)})"
