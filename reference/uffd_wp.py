"""The uffd-wp bit as the fault paths see it (the ops are in uffd.py)."""

from __future__ import annotations

from .state import Pte, Vma

FLAG = "uffd_wp"   # VM_UFFD_WP in Vma.flags


class UffdWriteProtected(Exception):
    """A write fault met a uffd-wp PTE: handle_userfault returned VM_FAULT_SIGBUS
    (UFFD_FEATURE_SIGBUS); a CPU store gets SIGBUS, GUP and hmm_range_fault -EFAULT."""

    def __init__(self, vpn: int):
        super().__init__(f"vpn {vpn:#x}")
        self.vpn = vpn


def protected(vma: Vma, pte: Pte | None) -> bool:
    """userfaultfd_pte_wp: the VMA is registered for WP and the PTE has the uffd-wp bit."""
    return pte is not None and pte.uffd_wp and FLAG in vma.flags


def check_write(vma: Vma, pte: Pte | None, vpn: int) -> None:
    """do_wp_page's first check, before any reuse or copy: a uffd-wp PTE goes to
    handle_userfault."""
    if protected(vma, pte):
        raise UffdWriteProtected(vpn)
