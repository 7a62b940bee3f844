"""mremap of PMD mappings (7.2 mm/mremap.c move_page_tables): a THP, the huge zero page
and a device THP (device_thp.py) mapped by one PMD entry.

move_page_tables walks the source in extents that end at a PMD boundary of the source or
of the target (get_extent). Where the source PMD is huge (pmd_is_huge: a present huge PMD
or a non-present one, the device-private PMD of a device THP included):

- the extent is the whole 2 MiB (the source PMD lies inside the range and source and
  target are equally aligned) and the target PMD is none: move_huge_pmd moves the entry as
  it is, with its deposited table. move_soft_dirty_pmd sets the soft-dirty bit of a present
  PMD (a THP, the huge zero page) but not of a device-private one: it marks only present
  and migration entries, unlike move_soft_dirty_pte, which marks every non-present PTE;
- otherwise split_huge_pmd (MMU_NOTIFY_CLEAR over the 2 MiB, inside move_page_tables'
  MMU_NOTIFY_UNMAP): __split_huge_pmd_locked makes 512 PTEs of the PMD (device-private
  PTEs for a device-private PMD), and move_ptes moves them like any other (soft-dirty set).
  The folio stays one large folio, mapped by PTEs at the new address.

A large folio is followed only while all its pages lie at one place (its virtual start,
`base`, is page 0's address): an mremap that moves some of a THP's mappings and not others
(part of its range, or one process's mappings of a folio another maps too) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mm import invalidate
from .refuse import Unmodelled
from .state import Kind, Mm, World
from .thp import PMD_PAGES, Pmd, forget_tables, split_pmd_mapping
from . import thp_split


@dataclass
class MovedPmds:
    """The PMD entries move_huge_pmd carries from source PMD index to target PMD index."""

    entries: dict[int, tuple[int, Pmd]] = field(default_factory=dict)
    # the source PMD indices split_huge_pmd split
    split: list[int] = field(default_factory=list)

    def carried(self, old_vpn: int) -> Pmd | None:
        """The PMD entry that carries page `old_vpn`, if a whole PMD moves it."""
        moved = self.entries.get(old_vpn // PMD_PAGES)
        return None if moved is None else moved[1]


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


def move_huge_pmds(world: World, mm_id: int, mm: Mm, start: int, length: int,
                   new_start: int) -> MovedPmds:
    """The PMD mappings in the source: the ones move_huge_pmd moves whole, after splitting
    the others (module docstring). Called inside move_page_tables' notifier, before the
    PTEs move."""
    end = start + length
    delta = new_start - start
    moved = MovedPmds()
    for index in sorted(i for i in mm.pmds if i * PMD_PAGES < end and start < (i + 1) * PMD_PAGES):
        base = index * PMD_PAGES
        whole = start <= base and base + PMD_PAGES <= end and delta % PMD_PAGES == 0
        if whole and _target_pmd_none(mm, (base + delta) // PMD_PAGES):
            moved.entries[index] = ((base + delta) // PMD_PAGES, mm.pmds.pop(index))
            continue
        # split_huge_pmd(pmc->old, old_pmd, pmc->old_addr)
        invalidate(world, mm_id, base, base + PMD_PAGES)
        split_pmd_mapping(mm, index)
        moved.split.append(index)
    return moved


def _target_pmd_none(mm: Mm, index: int) -> bool:
    """move_huge_pmd: "The destination pmd shouldn't be established, free_pgtables()
    should have released it"; if a PTE table is there, it returns false and the PMD is
    split instead."""
    if index not in mm.tables:
        return True
    if mm.tables[index] is None:
        raise Unmodelled("mremap of a PMD mapping to a PMD that may or may not be none",
                         "an earlier mremap may have moved a PTE table there")
    return False


def place_moved_pmds(mm: Mm, moved: MovedPmds) -> None:
    """set_pmd_at of each moved entry at its target PMD (no PTE table there)."""
    for new_index, pmd in moved.entries.values():
        mm.pmds[new_index] = pmd
        mm.tables.pop(new_index, None)


def note_moved_tables(mm: Mm, start: int, length: int, new_start: int,
                      moved: MovedPmds) -> None:
    """What move_page_tables leaves of the PTE tables: move_normal_pmd may have moved
    whole tables, move_ptes allocates target tables (pte_alloc) and leaves the source's,
    so whether those PMDs are none is unknown (the munmap of the source then frees what
    free_pgtables frees); a source PMD move_huge_pmd moved is none (its deposited table
    went with it), a target PMD it filled maps the THP. A source PMD split_huge_pmd split
    keeps its PTE table (move_ptes empties it, frees nothing), and every target PMD its
    PTEs went to got one (pte_alloc before move_ptes)."""
    forget_tables(mm, start, start + length)
    forget_tables(mm, new_start, new_start + length)
    for index in moved.entries:
        mm.tables.pop(index, None)
    delta = new_start - start
    for index in moved.split:
        mm.tables[index] = True
        first = max(start, index * PMD_PAGES) + delta
        last = min(start + length, (index + 1) * PMD_PAGES) - 1 + delta
        for target in range(first // PMD_PAGES, last // PMD_PAGES + 1):
            mm.tables[target] = True


def keeps_soft_dirty(moved: MovedPmds, old_vpn: int) -> bool:
    """move_soft_dirty_pmd leaves the bit of a device-private PMD as it was."""
    pmd = moved.carried(old_vpn)
    return pmd is not None and pmd.device


def moved_whole(moved: MovedPmds, index: int) -> bool:
    """Whether the source PMD `index` moved as one PMD mapping."""
    return index in moved.entries

