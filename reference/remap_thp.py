"""The PMD level of mremap's move_page_tables (7.2 mm/mremap.c): PMD mappings (a THP, the
huge zero page, a device THP's device-private PMD) and PTE tables.

try_realign_addr first moves the start of both ranges down to their PMD boundary when
they are equally aligned, the range reaches the next boundary, each starts its VMA and no
VMA lies below it in that PMD (can_realign_addr). Then the walk goes in extents that end
at a PMD boundary of the source or of the target (get_extent); per source PMD:

- huge (pmd_is_huge: a present huge PMD or a non-present one, the device-private PMD of a
  device THP included): a whole 2 MiB extent whose target PMD is none moves as it is
  (move_huge_pmd, with its deposited table; the source PMD is none after). Its
  move_soft_dirty_pmd sets the soft-dirty bit of a present PMD but not of a device-private
  one: it marks only present and migration entries, unlike move_soft_dirty_pte, which
  marks every non-present PTE. Otherwise split_huge_pmd (MMU_NOTIFY_CLEAR over the 2 MiB,
  inside move_page_tables' MMU_NOTIFY_UNMAP; __split_huge_pmd_locked: 512 PTEs, device-
  private ones for a device-private PMD) and move_ptes as below: the folio stays one large
  folio, mapped by PTEs at the new address;
- none: nothing (get_old_pmd finds no table, no target table is allocated);
- a PTE table: a whole 2 MiB extent whose target PMD is none moves the table as it is
  (move_normal_pmd, CONFIG_HAVE_MOVE_PMD; the source PMD is none after; its PTEs keep
  their soft-dirty bits, refused where that shows); otherwise pte_alloc gives the target
  PMD a table and move_ptes moves the PTEs (move_soft_dirty_pte marks each), the source
  keeping its table.

Where an earlier op left a PMD's table unknown (Mm.tables None) the outcome stays unknown,
and is refused where it decides what a later op sees (a PMD mapping moving there, the
soft-dirty bits of a table that may move whole).

A large folio is followed only while all its pages lie at one place (its virtual start,
`base`, is page 0's address): an mremap that moves some of a THP's mappings and not others
(part of its range, or one process's mappings of a folio another maps too) is refused.
"""

from __future__ import annotations

from .mm import invalidate
from .refuse import Unmodelled
from .state import Kind, Mm, World
from .thp import PMD_PAGES, split_pmd_mapping
from . import thp_split, vma as vmas


def refuse_partial_folios(world: World, mm_id: int, mm: Mm, start: int, end: int) -> None:
    """Refuse a move of [start, end) that leaves a large folio mapped at two places: one
    with a page there and a mapping elsewhere (outside the range, or in another mm)."""
    heads = {world.folios[pte.folio].thp for vpn, pte in mm.ptes.items()
             if start <= vpn < end and pte.kind in (Kind.PRESENT, Kind.EXCLUSIVE, Kind.DEVICE)}
    heads.discard(None)
    for head in heads:
        for other_id, vpn, _ in thp_split.pages_of(world, head):
            if other_id != mm_id or not start <= vpn < end:
                raise Unmodelled("mremap of part of a THP's mappings",
                                 "a large folio mapped at two places is not followed")


def move_page_tables(world: World, mm_id: int, mm: Mm, start: int, length: int,
                     new_start: int) -> list[range]:
    """The PMD level of move_page_tables of [start, start + length) to new_start, inside its
    notifier and before the PTEs move (module docstring): PMD mappings moved or split, the
    PTE tables noted. Returns the source ranges whose PTEs keep their soft-dirty bits
    (move_normal_pmd, a device-private PMD); the others' are set."""
    delta, end = new_start - start, start + length
    old_addr = start - start % PMD_PAGES if _realigns(mm, start, length, new_start) else start
    keep = []
    while old_addr < end:
        new_addr = old_addr + delta
        extent = min(PMD_PAGES - old_addr % PMD_PAGES, end - old_addr,
                     PMD_PAGES - new_addr % PMD_PAGES)
        chunk = range(old_addr, old_addr + extent)
        if _move_pmd(world, mm_id, mm, chunk, new_addr):
            keep.append(chunk)
        old_addr += extent
    return keep


def _move_pmd(world: World, mm_id: int, mm: Mm, chunk: range, new_addr: int) -> bool:
    """One extent of move_page_tables' loop; True when its PTEs keep their bits."""
    old, new = chunk.start // PMD_PAGES, new_addr // PMD_PAGES
    whole = len(chunk) == PMD_PAGES
    pmd = mm.pmds.get(old)
    if pmd is not None:
        if whole and _target_none(mm, new, "a PMD mapping"):
            mm.pmds[new] = mm.pmds.pop(old)      # move_huge_pmd
            mm.tables.pop(new, None)
            return pmd.device                    # move_soft_dirty_pmd
        invalidate(world, mm_id, old * PMD_PAGES, (old + 1) * PMD_PAGES)   # split_huge_pmd
        split_pmd_mapping(mm, old)
    elif old not in mm.tables:
        return False                             # pmd_none: nothing to move
    elif mm.tables[old] is None:
        # maybe none, maybe an empty table (a PTE would have made it known): the target
        # may get one (move_normal_pmd, pte_alloc)
        if mm.tables.get(new) is not True:
            mm.tables[new] = None
        return False
    elif whole and _target_none(mm, new, "a PTE table", chunk):
        _refuse_kept_soft_dirty(mm, chunk)
        del mm.tables[old]                       # move_normal_pmd
        mm.tables[new] = True
        return True
    mm.tables[new] = True                        # pte_alloc, then move_ptes
    return False


def _target_none(mm: Mm, index: int, what: str, chunk: range | None = None) -> bool:
    """move_huge_pmd and move_normal_pmd want the target PMD none ("free_pgtables() should
    have released it"); with a PTE table there they return false (move_normal_pmd with a
    WARN_ON_ONCE) and the PTEs move one by one."""
    if index not in mm.tables:
        return True
    if mm.tables[index] is None:
        if chunk is None:
            raise Unmodelled(f"mremap of {what} to a PMD that may or may not be none",
                             "an earlier mremap may have moved a PTE table there")
        _refuse_kept_soft_dirty(mm, chunk)
        mm.tables[chunk.start // PMD_PAGES] = None   # moved or not: unknown
        return False
    return False


def _refuse_kept_soft_dirty(mm: Mm, chunk: range) -> None:
    """move_normal_pmd (maybe) moving a table whose PTEs would keep clear soft-dirty bits:
    that matters only for a PTE without the bit where tracking is on (a VMA without
    VM_SOFTDIRTY)."""
    if all(vma.softdirty for vma in mm.vmas):
        return
    if any(not mm.ptes[vpn].soft_dirty for vpn in chunk if vpn in mm.ptes):
        raise Unmodelled("mremap of a whole 2 MiB page table with soft-dirty bits clear",
                         "move_normal_pmd moves the PTE table as it is (no "
                         "move_soft_dirty_pte); 6.1 has no try_realign_addr, which decides "
                         "it for a range starting inside a PMD, and no kernel showed it yet")


def _realigns(mm: Mm, start: int, length: int, new_start: int) -> bool:
    """can_realign_addr(pmc, PMD_MASK)."""
    align = start % PMD_PAGES
    if not align or align != new_start % PMD_PAGES or length < PMD_PAGES - align:
        return False
    for addr in (start, new_start):
        vma = mm.vma_at(addr)
        # can_align_down: the VMA starts there and no VMA lies below it in its PMD
        if vma is None or vma.start != addr or vmas.overlaps(mm, addr - align, addr):
            return False
    return True
