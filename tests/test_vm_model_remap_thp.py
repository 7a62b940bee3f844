"""mremap of PMD mappings on the real kernel (7.2), judged by the model (reference/remap_thp.py):
move_huge_pmd moves a THP, the huge zero PMD or a device THP's device-private PMD whole to
an aligned address (SNAPSHOT still shows the PMD flag), split_huge_pmd splits it when the
target is not aligned (the folio stays large, mapped by PTEs); a moved device-private PMD
keeps its soft-dirty bit (move_soft_dirty_pmd) where moved PTEs get it; a CPU fault on a
device THP moved whole brings the THP back, one on a split one splits the device folio and
brings back its page; migrate_to_dev of a PTE-mapped THP at an unaligned address splits
it."""

from __future__ import annotations

import pytest

from harness.prog.observation import KPF
from reference import uapi
from test_model_remap_thp import (   # the programs the model tests pin
    DONTUNMAP_SOURCE_READ, REALIGN,
)
from test_vm_model_support import agrees

pytestmark = pytest.mark.vm

R, W, PMD, LOCAL = uapi.PROT_READ, uapi.PROT_WRITE, uapi.PROT_PMD, uapi.PROT_DEV_PRIVATE_LOCAL
SOFT_DIRTY, SWAP = 1 << 55, 1 << 62


def soft_dirty(result) -> list[bool]:
    return [bool(entry.entry & SOFT_DIRTY) for entry in result.pagemap]


def test_a_thp_moves_whole_to_an_aligned_address_and_is_split_moving_elsewhere(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=512
        region b pages=2048
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map a[0:512]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 clear_soft_dirty
        p0 pagemap a[0:2]
        p0 dev_read d0 a[0:2]
        p0 mremap a[0:512] b[0:512]
        p0 pagemap b[0:2]
        p0 snapshot d0 b[0:2]
        p0 dev_read d0 b[510:514]
        p0 mremap b[0:512] b[1152:1664]
        p0 snapshot d0 b[1152:1154]
        p0 pagemap b[1152:1154]
        p0 pagemap b[1662:1664]
        p0 read b[1152:1664]
    """)
    assert soft_dirty(trace.results[6]) == [False, False]
    assert soft_dirty(trace.results[9]) == [True, True]         # move_soft_dirty_pmd
    assert trace.results[10].snapshot == bytes([R | PMD] * 2)   # one PMD, write-protected
    assert trace.results[13].snapshot == bytes([R] * 2)         # split: PTEs
    assert all(entry.flags & KPF["THP"] for entry in trace.results[15].pagemap)


def test_the_huge_zero_pmd_moves_whole_or_splits_into_small_zero_pages(kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region c pages=512
        region e pages=2048
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map c[0:512]
        p0 madvise c[0:512] hugepage
        p0 read c[0:1]
        p0 snapshot d0 c[0:2]
        p0 mremap c[0:512] e[0:512]
        p0 snapshot d0 e[0:2]
        p0 pagemap e[0:2]
        p0 mremap e[0:512] e[640:1152] dontunmap
        p0 snapshot d0 e[640:642]
        p0 read e[0:1]
        p0 snapshot d0 e[0:2]
        p0 pagemap e[640:642]
    """)
    assert trace.results[7].snapshot == bytes([R | PMD] * 2)
    assert trace.results[10].snapshot == bytes([uapi.PROT_ZERO | R] * 2)
    # the source PMD kept the table split_huge_pmd left: a small zero page, no THP
    assert trace.results[12].snapshot == bytes([uapi.PROT_ZERO | R, uapi.PROT_NONE])


def test_a_device_thp_moves_whole_keeping_its_soft_dirty_bit_and_comes_back_whole(
        kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region a pages=512
        region b pages=512
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map a[0:512]
        p0 madvise a[0:512] hugepage
        p0 write a[0:512] seed=1
        p0 pagemap a[0:1]
        p0 clear_soft_dirty
        p0 migrate_to_dev d0 a[0:512]
        p0 pagemap a[0:2]
        p0 mremap a[0:512] b[0:512]
        p0 pagemap b[0:2]
        p0 snapshot d0 b[0:2]
        p0 read b[0:1]
        p0 pagemap b[0:2]
        p0 snapshot d0 b[0:2]
    """)
    assert soft_dirty(trace.results[10]) == [False, False]   # move_soft_dirty_pmd: not marked
    assert trace.results[11].snapshot == bytes([LOCAL | R | PMD] * 2)   # write-protected
    assert all(entry.flags & KPF["THP"] for entry in trace.results[13].pagemap)
    assert trace.results[14].snapshot == bytes([R | PMD] * 2)


def test_a_device_thp_moved_to_an_unaligned_address_splits_and_faults_back_page_by_page(
        kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region c pages=512
        region e pages=2048
        p0 open d0 dmirror0
        p0 thp madvise madvise
        p0 map c[0:512]
        p0 madvise c[0:512] hugepage
        p0 write c[0:512] seed=2
        p0 pagemap c[0:1]
        p0 migrate_to_dev d0 c[0:512]
        p0 mremap c[0:512] e[128:640] dontunmap
        p0 snapshot d0 e[128:130]
        p0 pagemap e[128:130]
        p0 read e[300:301]
        p0 pagemap e[299:302]
        p0 snapshot d0 e[128:130]
        p0 read c[0:1]
        p0 pagemap c[0:1]
        p0 read e[128:640]
        p0 pagemap e[128:130]
    """)
    assert trace.results[8].snapshot == bytes([LOCAL | W] * 2)      # device-private PTEs
    assert soft_dirty(trace.results[9]) == [True, True]             # move_soft_dirty_pte
    before, back, after = trace.results[11].pagemap
    assert before.entry & SWAP and after.entry & SWAP and not back.flags & KPF["THP"]


def test_migrate_to_dev_of_a_thp_left_pte_mapped_at_an_unaligned_address_splits_it(
        kernel_session):
    _, trace, _ = agrees(kernel_session, """
        region buffer pages=2048
        p0 open fd dmirror0
        p0 thp madvise madvise
        p0 map buffer[0:2048]
        p0 madvise buffer[0:512] hugepage
        p0 munmap buffer[512:1536]
        p0 write buffer[0:512] seed=1
        p0 pagemap buffer[0:1]
        p0 mremap buffer[0:512] buffer[640:1152]
        p0 migrate_to_dev fd buffer[640:1152]
        p0 snapshot fd buffer[640:642]
        p0 pagemap buffer[640:642]
        p0 read buffer[640:1152]
        p0 pagemap buffer[640:642]
    """)
    assert trace.results[8].cpages == 512
    assert trace.results[9].snapshot == bytes([LOCAL | W] * 2)
    assert not any(entry.flags & KPF["THP"] for entry in trace.results[12].pagemap)


def test_move_normal_pmd_leaves_the_source_pmd_none_and_move_ptes_leaves_its_table(
        kernel_session):
    """After MREMAP_DONTUNMAP a THP-eligible read of the emptied source maps the huge zero
    PMD where move_normal_pmd took the PTE table away (a whole aligned 2 MiB), a small
    zero page where move_ptes left it (an unaligned target)."""
    _, trace, _ = agrees(kernel_session, DONTUNMAP_SOURCE_READ)
    assert trace.results[7].snapshot == bytes([R | PMD])
    assert trace.results[11].snapshot == bytes([uapi.PROT_ZERO | R])


def test_try_realign_addr_moves_the_first_table_whole(kernel_session):
    """The range starts its VMA inside a PMD, with nothing below it there, and the target
    is equally aligned: try_realign_addr starts the move at the PMD boundary, so
    move_normal_pmd takes the first PMD's table (the source PMD is none: a THP-eligible
    read maps the huge zero PMD) and the target PMD has it (a small zero page)."""
    _, trace, _ = agrees(kernel_session, REALIGN)
    assert trace.results[8].snapshot == bytes([R | PMD])
    assert trace.results[12].snapshot == bytes([uapi.PROT_ZERO | R])

