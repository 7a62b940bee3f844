"""The walk of try_to_migrate() and try_to_unmap() over the reverse map of an anonymous
folio (mm/rmap.c): the device-migration code (mm/migrate_device.c: migrate_device_unmap)
for a folio still mapped after its collect step (a page shared by fork that one process
migrates to or from device memory or faults back) and for every device page eviction
takes back; NUMA migration (move_pages, mbind) and reclaim (madvise pageout) of any page.

rmap_walk_anon visits the VMAs of the folio's anon_vma that cover its page offset
(anon_vma_interval_tree_foreach) in interval-tree order, and stops as soon as the folio is
no longer mapped (folio_not_mapped, the walks' `done`). try_to_migrate_one and
try_to_unmap_one fire MMU_NOTIFY_CLEAR (owner NULL, so every dmirror of that mm erases the
page and, by the dmirror_do_update quirk, the next) over the page in each VMA they visit,
before page_vma_mapped_walk looks for a mapping there. So:

- every VMA that still maps the folio is visited: a certain CLEAR at its address;
- a VMA that covers the page offset but does not map the folio (the process that unmapped
  it itself in migrate_vma_collect_pmd, a process whose write copied the page, a process
  that was forked before the page was faulted in) is visited only if it comes before the
  last mapping VMA in the tree: the order depends on the VMAs' vm_pgoff and on when each
  anon_vma_chain was (re)inserted (fork, VMA splits and merges re-insert), which the model
  does not follow, so those entries may or may not go (Entry.maybe_gone, resolved by the
  ops that read the mirror: hmm.settle). The model does not follow anon_vma chains
  either: every private VMA covering the offset counts, a superset of the walk's.
"""

from __future__ import annotations

from dataclasses import replace

from .mm import invalidate
from .state import Kind, World

# The entries that map a folio (a device-exclusive entry keeps the rmap too).
MAPPING_KINDS = (Kind.PRESENT, Kind.DEVICE, Kind.EXCLUSIVE)


def mappings(world: World, folio_id: int) -> list[tuple[int, int]]:
    """(mm, vpn) of every PTE mapping the folio, in every live mm."""
    return [(mm_id, vpn) for mm_id, mm in world.mms.items() if mm.alive
            for vpn, pte in mm.ptes.items()
            if pte.folio == folio_id and pte.kind in MAPPING_KINDS]


def unmap_walk(world: World, mm_id: int, vpn: int, mapped: list[tuple[int, int]]) -> None:
    """The MMU_NOTIFY_CLEARs of try_to_migrate()/try_to_unmap() over the folio the PTE at
    vpn of mm_id maps (or mapped until the caller unmapped it itself), which is still mapped
    at `mapped` ((mm, vpn) pairs): certain there, maybe in every other VMA the walk could
    visit. Nothing when it is mapped nowhere (migrate_device_unmap calls try_to_migrate
    only if folio_mapped)."""
    if not mapped:
        return
    for other_id, other_vpn in mapped:
        invalidate(world, other_id, other_vpn, other_vpn + 1)
    for other_id, address in walked(world, mm_id, vpn):
        if (other_id, address) not in mapped:
            maybe_invalidate(world, other_id, address)


def maybe_unmap_walk(world: World, mm_id: int, vpn: int) -> None:
    """A walk that may or may not happen (compaction chooses the folios it migrates): every
    VMA it could visit, the mapping at vpn included, may get the CLEAR."""
    for other_id, address in walked(world, mm_id, vpn):
        maybe_invalidate(world, other_id, address)


def walked(world: World, mm_id: int, vpn: int):
    """(mm, address) of every VMA the walk over the folio mapped at vpn of mm_id may visit:
    for an anonymous folio those that can be in its anon_vma (private ones), for a
    page-cache folio those mapping its object (rmap_walk_file: the file's i_mmap tree,
    shared and private mappings); either covering the folio's page offset (folio_pgoff:
    linear_page_index of the VMA at vpn, Vma.shift), at the address that offset has there."""
    mm = world.mms[mm_id]
    vma = mm.vma_at(vpn)
    offset = vpn + vma.shift
    obj = vma.obj if world.folios[mm.ptes[vpn].folio].page_cache else None
    for other_id, other in world.mms.items():
        if not other.alive:
            continue
        for candidate in other.vmas:
            address = offset - candidate.shift
            covered = candidate.obj == obj if obj is not None else not candidate.shared
            if covered and address in candidate:
                yield other_id, address


def unmap_walk_large(world: World, mm_id: int, base: int, npages: int,
                     mapped: set[tuple[int, int]]) -> None:
    """The MMU_NOTIFY_CLEARs of try_to_migrate() over a large folio (a device THP) at
    [base, base + npages) of mm_id: try_to_migrate_one fires its notifier over the folio's
    range clamped to each VMA it visits (vma_address .. vma_address_end). Certain in the
    VMAs that map the folio by a PMD at `mapped` ((mm, base) pairs), maybe in every other
    VMA of the folio's anon_vma over its page offsets (the module docstring)."""
    offset = base + world.mms[mm_id].vma_at(base).shift
    for other_id, other in world.mms.items():
        if not other.alive:
            continue
        for candidate in other.vmas:
            if candidate.shared or candidate.anon is None:
                continue      # not in an anon_vma's interval tree
            start = offset - candidate.shift
            lo, hi = max(start, candidate.start), min(start + npages, candidate.end)
            if lo >= hi:
                continue
            if (other_id, lo) in mapped and hi - lo == npages:
                invalidate(world, other_id, lo, hi)
            else:
                for vpn in range(lo, hi):
                    maybe_invalidate(world, other_id, vpn)


def maybe_invalidate(world: World, mm_id: int, vpn: int) -> None:
    """An MMU_NOTIFY_CLEAR over the page at vpn that may or may not have happened: the
    entries it would erase (the page's and, by the dmirror_do_update quirk, the next
    page's) in every dmirror of the mm are maybe gone."""
    for mirror in world.mirrors_of(mm_id):
        for page in (vpn, vpn + 1):
            entry = mirror.table.get(page)
            if entry is not None and not entry.maybe_gone:
                mirror.table[page] = replace(entry, maybe_gone=True)
