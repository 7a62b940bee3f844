"""Device-coherent memory (MEMORY_DEVICE_COHERENT): /dev/hmm_dmirror2 and 3.

test_hmm backs these devices with a chunk of real, CPU-addressable RAM (spm_addr_dev0/1).
A page migrated there is a ZONE_DEVICE page the CPU maps with an ordinary present PTE: the
model keeps it as a Kind.PRESENT entry of a folio whose `device` names the coherent device
(a device-private page is a Kind.DEVICE entry instead). Everything the kernel does to such
a page through the generic anonymous-memory paths (read and write in place, fork and COW,
mprotect, mremap, munmap, soft-dirty, GUP without FOLL_LONGTERM, the device's
hmm_range_fault) the model states as for any anonymous folio; what differs is stated where
it differs:

- migration to the device (device.py): only MIGRATE_VMA_SELECT_SYSTEM pages are collected,
  so a coherent page is skipped by every dmirror's migrate_to_dev; migrate_vma_insert_page
  maps a fresh coherent page with mk_pte + pte_mkwrite(pte_mkdirty()) when VM_WRITE;
- migration back (device.py): migrate_to_sys of the owning device selects
  MIGRATE_VMA_SELECT_DEVICE_COHERENT with its own pgmap owner; eviction (close, release)
  migrates every page of the device's chunk back; there is no CPU fault on them;
- SNAPSHOT (hmm.py): dmirror_mkentry says DEV_COHERENT_LOCAL or _REMOTE;
- reclaim and lazyfree (reclaim.py): madvise cold/pageout/free skip zone-device folios;
- pagemap (pagemap.py): the PFN lies in the device's chunk; /proc/kpagecount and
  kpageflags find no online page there (pfn_to_online_page), so count 0 and no flags.

Ops whose ZONE_DEVICE paths the model has not followed refuse where they meet a coherent
page (guard below); each is named in docs/model.md.
"""

from __future__ import annotations

from harness.prog.ops import (
    COHERENT_DEVICES, Advice, CheckExclusive, CloseDevice, ClearSoftDirty, Compact, CpuRead,
    CpuWrite, DevRead, DevWrite, Exclusive, Exit, Flags, Fork, KsmMerge, Madvise, Map, MigrateToDev,
    MigrateToSys, Mbind, Mlock, MovePages, Mprotect, Mremap, Munlock, Munmap, OpenDevice,
    Pagemap, Release, Smaps, Snapshot, Thp, UffdRegister, UffdUnregister, UffdWriteprotect,
)

from .refuse import Unmodelled, op_meets, op_name
from .state import Kind, Mm, World

# Ops stated for coherent pages (the module docstring says how).
_STATED = (Map, Munmap, Mprotect, CpuWrite, CpuRead, Fork, OpenDevice, DevRead, DevWrite,
           Snapshot, CheckExclusive, MigrateToDev, MigrateToSys, Release, Flags, CloseDevice,
           Exit, Mremap, ClearSoftDirty, Pagemap,
           # generic paths: mlock_pte_range skips zone-device folios (nothing observable),
           # populate is GUP without FOLL_LONGTERM; smaps_pte_entry accounts a coherent
           # page as any anonymous page (vm_normal_page finds it); uffd-wp changes present
           # PTEs the same way (change_pte_range skips zone-device folios for prot_numa
           # only); a THP mode change touches no page (khugepaged's start scan is refused
           # by collapse.py wherever a PMD has entries)
           Mlock, Munlock, Smaps, UffdRegister, UffdUnregister, UffdWriteprotect, Thp,
           # compaction and ksmd skip zone-device folios (semantics._compact, ksm.py);
           # move_pages answers -ENOENT for them, mbind does not queue them (numa.py)
           Compact, KsmMerge, MovePages, Mbind,
           # make_device_exclusive takes any anonymous page: a device-exclusive entry of the
           # coherent page, which migrate_to_sys skips (not device-private) and eviction
           # takes back read-only (device.py; 6.x cannot: docs/findings.md #21)
           Exclusive)
_STATED_ADVICE = {
    Advice.DONTNEED,                          # zap_pte_range: as for any anonymous folio
    Advice.COLD, Advice.PAGEOUT, Advice.FREE,  # skip zone-device folios (reclaim.py)
    Advice.WILLNEED,                          # swapin_walk_pmd_entry: swap entries only
    # GUP without FOLL_LONGTERM (faultin_page_range): a present page needs no fault, a
    # read-only one a write fault (COW) as for any anonymous folio
    Advice.POPULATE_READ, Advice.POPULATE_WRITE,
    # flags only (madvise_update_vma; ksm_madvise, hugepage_madvise); UNMERGEABLE breaks
    # KSM pages only, and a coherent page is never one
    Advice.DONTFORK, Advice.DOFORK, Advice.WIPEONFORK, Advice.KEEPONFORK, Advice.NOHUGEPAGE,
    Advice.HUGEPAGE, Advice.MERGEABLE, Advice.UNMERGEABLE,
}


def is_coherent_device(device: str) -> bool:
    return device in COHERENT_DEVICES


def is_coherent_page(world: World, folio_id: int) -> bool:
    folio = world.folios.get(folio_id)
    return folio is not None and folio.device is not None and is_coherent_device(folio.device)


def _entries(mm: Mm, start: int, end: int):
    return (mm.ptes[vpn] for vpn in range(start, end) if vpn in mm.ptes)


def _meets(world: World, mm: Mm, start: int | None, end: int | None) -> bool:
    entries = mm.ptes.values() if start is None else _entries(mm, start, end)
    return any(pte.kind in (Kind.PRESENT, Kind.EXCLUSIVE) and is_coherent_page(world, pte.folio)
               for pte in entries)


def guard(world: World, op, places) -> None:
    """Refuse an op not stated for coherent pages where it meets one (an op without a range,
    such as compact or ksm_merge, wherever one is mapped)."""
    if isinstance(op, _STATED) or (isinstance(op, Madvise) and op.advice in _STATED_ADVICE):
        return
    if not any(folio.device is not None and is_coherent_device(folio.device)
               for folio in world.folios.values()):
        return
    if op_meets(world, op, places, _meets):
        raise Unmodelled(f"{op_name(op)} on a device-coherent page",
                         "its ZONE_DEVICE path is not followed yet")


def refuse_compound(world: World, mm: Mm, vma, start: int, end: int) -> None:
    """A piece of migrate_to_dev by a coherent dmirror that 7.2 would migrate as one
    compound entry (a whole aligned 2 MiB without a PTE table, or the huge zero PMD or a
    THP in it), or that meets a THP: 7.2's dmirror_devmem_alloc_page(is_large) finds no
    free folio in the device's only chunk and WARNs in memremap_pages
    (docs/findings.md #18); THPs and coherent memory are not followed otherwise either."""
    from .thp import PMD_PAGES, pmd_of

    if not world.profile.device_thp or vma.obj is not None:
        return
    first, last = pmd_of(start), pmd_of(end - 1)
    whole = start % PMD_PAGES == 0 and end - start == PMD_PAGES
    has_table = mm.tables.get(first) is True and first not in mm.pmds
    meets_thp = any(index in mm.pmds for index in range(first, last + 1)) or any(
        pte.kind is Kind.PRESENT and world.folios[pte.folio].thp is not None
        for pte in _entries(mm, start, end))
    if (whole and not has_table) or meets_thp:
        raise Unmodelled("migrate_to_dev of a 2 MiB piece or a THP to device-coherent memory "
                         "(a WARN on 7.2: docs/findings.md #18)")
