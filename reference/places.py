"""Between a program's names (region `a`, page 3) and virtual page numbers."""

from __future__ import annotations

from harness.prog import PAGE_SIZE, PageRange, Program
from harness.prog.ops import REGION_BASE, REGION_STRIDE, Thp, ThpEnabled

_BASE = REGION_BASE // PAGE_SIZE
_SLOT_PAGES = REGION_STRIDE // PAGE_SIZE


class Places:
    def __init__(self, program: Program):
        regions = program.regions.values()
        self._first = {r.name: r.address // PAGE_SIZE for r in regions}
        self._by_slot = {r.slot: r.name for r in regions}
        # The program turns THP on somewhere: the model then follows which PMDs have PTE
        # tables (thp.note_tables), since a THP fault needs pmd_none.
        self.thp_programmed = any(isinstance(op, Thp) and op.enabled is not ThpEnabled.NEVER
                                  for op in program.ops)
        self._pages = {r.name: r.pages for r in regions}

    def pages(self, region: str) -> int:
        return self._pages[region]

    def vpns(self, page_range: PageRange) -> tuple[int, int]:
        first = self._first[page_range.region]
        return first + page_range.start, first + page_range.end

    def name(self, vpn: int) -> str:
        """`a[3]` for the fourth page of region a."""
        slot, index = divmod(vpn - _BASE, _SLOT_PAGES)
        region = self._by_slot.get(slot)
        return f"{region}[{index}]" if region is not None else f"vpn {vpn:#x}"
