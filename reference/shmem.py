"""Memory backed by a shmem object: `map shared`, `map memfd` and `map file`.

- `map shared` (MAP_SHARED | MAP_ANONYMOUS): do_mmap gives it pgoff 0 and shmem_zero_setup
  a new shmem object of the mapping's size, so every such mapping has its own object.
- `map memfd` (MAP_SHARED of the region's memfd) and `map file` (MAP_PRIVATE of the
  region's file on the runner's tmpfs): one object per region and program, created before
  the program; page i of the region is page i of the object (vm_pgoff).

The object's pages are page-cache folios (World.objects, Folio.page_cache): they outlive their
mappings, every mapping of the object (in any process) maps the same folio, and they are
not anonymous (pagemap PM_FILE, no KPF_ANON; make_device_exclusive refuses them). A VMA
maps them through shmem_vm_ops / shmem_anon_vm_ops (mm/shmem.c, 7.2):

- a read fault is do_read_fault: do_fault_around maps the object's folios already in the
  page cache around the address (filemap_map_pages), then shmem_fault ->
  shmem_get_folio_gfp(SGP_CACHE) finds or allocates (zeroed, uptodate) the folio and
  finish_fault maps it;
- a write fault on a shared mapping is do_shared_fault (no fault-around); on a private one
  do_cow_fault: the page-cache folio is found or allocated all the same, and a new
  anonymous folio with its content is mapped; a write to a read-only page-cache PTE of a
  private mapping is wp_page_copy (MMU_NOTIFY_CLEAR over the page);
- a PTE of a shared mapping takes vm_page_prot, which has the write bit whenever the VMA
  has VM_WRITE and VM_SOFTDIRTY (shmem has no page_mkwrite: only soft-dirty tracking after
  clear_soft_dirty makes vma_wants_writenotify true, Vma.writenotify), so it is writable
  iff the VMA is, for a read fault, fault-around and mprotect alike (change_pte_range
  applies pte_modify(newprot)); a page-cache PTE of a private mapping is never writable.
"""

from __future__ import annotations

from dataclasses import replace

from harness.prog import ZERO, Prot
from harness.prog.ops import Advice, MapKind

from . import vma as vmas
from .refuse import Unmodelled
from .state import Folio, Kind, Mm, Pte, Vma, World
from .uffd_shmem import has_marker, marker_fault, unmap_keeps
from .uffd_wp import FLAG

FAULT_AROUND_PAGES = 16   # fault_around_bytes (64 KiB) >> PAGE_SHIFT: fault_around_pages
PTRS_PER_PTE = 512
# Object names: "shared<id>:<pages>", "memfd:<region>:<pages>", "file:<region>:<pages>"; the
# pages are the object's size (i_size), past which a mapping's pages SIGBUS.
_SHARED_ANON = "shared"


def _size(obj: str) -> int:
    return int(obj.rsplit(":", 1)[1])


# ------------------------------------------------------------------ mmap

def map_backed(world: World, mm: Mm, start: int, end: int, kind: MapKind,
               region: str, region_start: int, region_pages: int) -> None:
    """mmap(PROT_READ|PROT_WRITE, MAP_FIXED_NOREPLACE) of a free range backed by an object.
    A shared mapping has no VM_ACCOUNT (accountable_mapping: VM_SHARED is charged by shmem
    per object); a private writable file mapping has it. __mmap_region merges the new VMA
    with neighbours of the same file, flags and contiguous vm_pgoff (vma_merge_new_range),
    so a memfd or file region mapped in pieces becomes one VMA; a shared anonymous
    mapping's object is its own, it merges with nothing."""
    if kind is MapKind.SHARED:
        # shmem_zero_setup: an object of the mapping's size
        obj = f"{_SHARED_ANON}{world.new_id()}:{end - start}"
        shift = -start   # do_mmap: "Ignore pgoff" -> vm_pgoff 0
    else:
        # the runner sizes the region's memfd and file to the region (ftruncate)
        obj = f"{kind.value}:{region}:{region_pages}"
        shift = -region_start
    world.objects.setdefault(obj, {})
    shared = kind is not MapKind.FILE
    fresh = Vma(start, end, Prot.RW, account=not shared, shift=shift, obj=obj,
                shared=shared)
    merged = vmas.merge_new(mm, fresh, None, world.profile)
    # __mmap_complete: "New (or expanded) vma always get soft dirty status.", then
    # vma_set_page_prot: no writenotify with VM_SOFTDIRTY
    mm.vmas[mm.vmas.index(merged)] = replace(merged, softdirty=True, writenotify=False)


def forget_unreachable(world: World) -> None:
    """A shared anonymous object goes with the last VMA mapping it (the VMAs hold its only
    file references): its folios are freed."""
    dead = [obj for obj in world.objects if obj.startswith(_SHARED_ANON)]
    if not dead:
        return
    mapped = {vma.obj for mm in world.mms.values() for vma in mm.vmas}
    for obj in dead:
        if obj not in mapped:
            for folio in world.objects.pop(obj).values():
                world.folios.pop(folio, None)
            for key in [key for key in world.object_policy if key[0] == obj]:
                del world.object_policy[key]


# ------------------------------------------------------------------ faults

def is_cache(world: World, pte: Pte | None) -> bool:
    return pte is not None and pte.kind is Kind.PRESENT and world.folios[pte.folio].page_cache


def _page_of(vma: Vma, vpn: int) -> int:
    return vpn + vma.shift


def get_folio(world: World, vma: Vma, vpn: int) -> int:
    """shmem_fault -> shmem_get_folio_gfp(SGP_CACHE): the object's folio, allocated zeroed
    and uptodate when the page cache has none. A page in swap comes back through
    shmem_swapin_folio: a new folio with its content (zram is SWP_SYNCHRONOUS_IO:
    shmem_swap_alloc_folio), marked dirty (folio_mark_dirty), the slot freed. Both
    allocate by the object's shared policy at the page (shmem_get_pgoff_policy: set by
    mbind through any VMA mapping it), else the task's: the local node; the VMA's own
    policy is not asked."""
    pages = world.objects[vma.obj]
    page = _page_of(vma, vpn)
    node = world.object_policy.get((vma.obj, page), vmas.LOCAL_NODE)
    slot = world.folios.get(pages.get(page))
    if slot is not None and slot.swapped:
        del world.folios[pages[page]]
        folio = pages[page] = world.new_id()
        world.folios[folio] = Folio(slot.content, mapcount=0, exclusive=False, node=node,
                                    page_cache=True, dirty=True)
    if page not in pages:
        folio = world.new_id()
        world.folios[folio] = Folio(ZERO, mapcount=0, exclusive=False, node=node,
                                    page_cache=True)
        pages[page] = folio
    return pages[page]


def _map_cache_page(world: World, mm: Mm, vma: Vma, vpn: int, folio: int,
                    write: bool) -> None:
    """set_pte_range: mk_pte(vm_page_prot), folio_add_file_rmap_ptes; pte_mkdirty (which
    sets the soft-dirty bit on x86) for a write fault, and for a writable PTE of a folio
    already dirty."""
    page = world.folios[folio]
    world.folios[folio] = replace(page, mapcount=page.mapcount + 1)
    writable = write or prot_writable(vma)   # a write fault: maybe_mkwrite
    dirty = write or (writable and page.dirty)
    mm.ptes[vpn] = Pte(Kind.PRESENT, folio, writable, clean=not dirty, soft_dirty=dirty)


def prot_writable(vma: Vma) -> bool:
    """vm_page_prot has the write bit: a shared VMA with VM_WRITE, unless writenotify
    (soft-dirty tracking after clear_soft_dirty) took it away."""
    return vma.shared and vma.prot.writable and not vma.writenotify


def set_page_prot(mm: Mm, vpn: int) -> None:
    """vma_set_page_prot of the VMA at vpn: vma_wants_writenotify for a shared VMA without
    VM_SOFTDIRTY (vma_soft_dirty_enabled)."""
    i = next(k for k, v in enumerate(mm.vmas) if v.start <= vpn < v.end)
    mm.vmas[i] = wants_writenotify(mm.vmas[i])


def wants_writenotify(vma: Vma) -> Vma:
    """vma_set_page_prot: vma_wants_writenotify for a shared VMA without VM_SOFTDIRTY
    (vma_soft_dirty_enabled) or registered for uffd-wp (userfaultfd_wp)."""
    return replace(vma, writenotify=vma.shared and (not vma.softdirty or FLAG in vma.flags))


def read_fault(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """do_read_fault on pte_none (or a uffd-wp marker, uffd_shmem.py): do_fault_around,
    then __do_fault + finish_fault. A VMA registered for uffd-wp does not fault around
    (should_fault_around -> uffd_disable_fault_around)."""
    if has_marker(mm, vpn):
        marker_fault(world, mm, vma, vpn, write=False)
        return
    if FLAG not in vma.flags:
        _fault_around(world, mm, vma, vpn)
    if vpn not in mm.ptes:
        map_read(world, mm, vma, vpn)


def map_read(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """__do_fault + finish_fault of a read fault: the object's folio mapped."""
    _map_cache_page(world, mm, vma, vpn, get_folio(world, vma, vpn), write=False)


def _fault_around(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """do_fault_around: the window is fault_around_pages PTEs aligned down, clamped to the
    VMA's start (then running fault_around_pages on from there), to the PTE table and to the
    VMA's end; filemap_map_pages maps every page-cache folio of the object in it
    (next_uptodate_folio: shmem folios are uptodate once faulted) whose PTE is none
    (filemap_map_order0_folio)."""
    pte_off = vpn % PTRS_PER_PTE
    vma_off = vpn - vma.start
    from_pte = max(pte_off - pte_off % FAULT_AROUND_PAGES, pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + FAULT_AROUND_PAGES, PTRS_PER_PTE,
                 pte_off + (vma.end - vma.start) - vma_off) - 1
    table = vpn - pte_off
    pages = world.objects[vma.obj]
    for page in range(table + from_pte, table + to_pte + 1):
        folio = pages.get(_page_of(vma, page))
        # next_uptodate_folio skips swap entries of the object (xa_is_value)
        if folio is not None and page not in mm.ptes and not world.folios[folio].swapped:
            _map_cache_page(world, mm, vma, page, folio, write=False)


def write_fault(world: World, mm: Mm, vma: Vma, vpn: int) -> None:
    """A write fault on pte_none of a VMA with VM_WRITE. Shared: do_shared_fault maps the
    object's folio writable and dirty. Private: do_cow_fault (vmf_anon_prepare, a new
    anonymous folio, __do_fault still finds or allocates the page-cache folio to copy
    from), mapped writable; no MMU notifier either way (the PTE was none)."""
    if has_marker(mm, vpn):
        marker_fault(world, mm, vma, vpn, write=True)
    folio = get_folio(world, vma, vpn)
    if vma.shared:
        _map_cache_page(world, mm, vma, vpn, folio, write=True)
        return
    vmas.anon_prepare(world, mm, vpn)
    copy = world.new_folio(world.folios[folio].content, vmas.alloc_node(vma))
    mm.ptes[vpn] = Pte(Kind.PRESENT, copy, True)


def write_protected(world: World, mm_id: int, mm: Mm, vma: Vma, vpn: int) -> None:
    """do_wp_page on a read-only PTE of a page-cache folio in a VMA with VM_WRITE. Shared:
    wp_page_shared -> wp_page_reuse (no page_mkwrite; permissions only grow, no notifier).
    Private: the folio is not anonymous, so wp_page_copy: vmf_anon_prepare, MMU_NOTIFY_CLEAR
    over the page, a new exclusive anonymous folio with the content, mapped writable; the
    page-cache folio loses a mapping and stays in the object."""
    from .mm import invalidate
    pte = mm.ptes[vpn]
    if vma.shared:
        # wp_page_reuse: maybe_mkwrite(pte_mkdirty())
        mm.ptes[vpn] = replace(pte, writable=True, clean=False, soft_dirty=True)
        mark_dirty(world, pte.folio)
        return
    vmas.anon_prepare(world, mm, vpn)
    invalidate(world, mm_id, vpn, vpn + 1)
    world.unmap_folio(pte.folio)
    copy = world.new_folio(world.folios[pte.folio].content, vmas.alloc_node(vma))
    mm.ptes[vpn] = Pte(Kind.PRESENT, copy, True)


def mark_dirty(world: World, folio_id: int) -> None:
    folio = world.folios[folio_id]
    if folio.page_cache and not folio.dirty:
        world.folios[folio_id] = replace(folio, dirty=True)


def reclaim_cache_page(world: World, mm: Mm, vpn: int) -> None:
    """madvise pageout of a page-cache folio mapped once (madvise_cold_or_pageout_pte_range:
    the runner is root, so can_do_file_pageout lets shmem and file folios through), after
    try_to_unmap_one unmapped it under MMU_NOTIFY_CLEAR (reclaim.py): shrink_folio_list
    writes a dirty one out (pageout -> shmem_writeout: the object's page becomes a swap
    entry, the folio is freed) and frees a clean one (__remove_mapping: the object loses
    the page, which reads zero again). Only stores and write faults dirty a folio: a
    device write through the mirror (dmirror_do_write, a kernel mapping) does not, so its
    data is dropped with a clean folio (docs/findings.md)."""
    from .reclaim import SWAP_SLOTS_STATED, swap_slots_in_use
    pte = mm.ptes.pop(vpn)
    unmap_keeps(mm, mm.vma_at(vpn), vpn, pte)
    folio = world.folios[pte.folio]
    world.folios[pte.folio] = folio = replace(folio, mapcount=folio.mapcount - 1)
    world.pfns.pop(("pfn", pte.folio), None)
    pages = next(pages for pages in world.objects.values() if pte.folio in pages.values())
    page = next(page for page, folio_id in pages.items() if folio_id == pte.folio)
    if not folio.dirty:
        del pages[page]
        del world.folios[pte.folio]
        return
    if swap_slots_in_use(world) >= SWAP_SLOTS_STATED:
        raise Unmodelled("madvise pageout with the swap device nearly full",
                         "folio_alloc_swap may fail")
    world.folios[pte.folio] = replace(folio, swapped=True)


def set_policy(world: World, vma: Vma, node: int) -> None:
    """mbind_range -> vma_replace_policy -> vm_ops->set_policy = shmem_set_policy:
    mpol_set_shared_policy over the whole VMA (as split or merged for the mbind) in the
    object: from now on the object's pages there are allocated on `node`, whichever
    mapping faults them."""
    for vpn in range(vma.start, vma.end):
        world.object_policy[(vma.obj, _page_of(vma, vpn))] = node


def populates_with_write(vma: Vma) -> bool:
    """populate_vma_page_range (mlock, mprotect of a locked VMA): FOLL_WRITE only for a
    private writable VMA ((vm_flags & (VM_WRITE | VM_SHARED)) == VM_WRITE)."""
    return vma.prot.writable and not vma.shared


# ------------------------------------------------------------------ what differs elsewhere

def madvise_einval(advice: Advice, vma: Vma) -> str | None:
    """Advice the kernel refuses on an object-backed VMA with -EINVAL (ending
    madvise_walk_vmas there), with the reason; None if it applies."""
    if vma.obj is None:
        return None
    if advice is Advice.FREE:
        return "madvise_free_single_vma: \"MADV_FREE works for only anon vma\" -> -EINVAL"
    if advice is Advice.WIPEONFORK:
        return ("madvise_vma_behavior: MADV_WIPEONFORK \"is only supported on anonymous "
                "memory\" (vma->vm_file) -> -EINVAL")
    return None


def ignores_advice(advice: Advice, vma: Vma) -> bool:
    """ksm_madvise(MADV_MERGEABLE) ignores a VM_SHARED VMA (ksm_compatible: "Just ignore the
    advice"): no flag, no split."""
    return advice is Advice.MERGEABLE and vma.shared


def refuse_mremap(mm: Mm, op, start: int, end: int) -> None:
    """mremap of shmem VMAs is followed like that of anonymous ones (remap.py: copy_vma
    keeps vm_pgoff, move_page_tables moves the page-cache PTEs as they are;
    dontunmap_complete leaves the source VMA its object and offset, so later faults there
    read the object again) except for a growth past the object's size (those pages SIGBUS:
    shmem_fault), refused."""
    for vma in vmas.overlaps(mm, start, end):
        if vma.obj is None:
            continue
        if op.new_npages > end - start and \
                start + op.new_npages - 1 + vma.shift >= _size(vma.obj):
            raise Unmodelled("mremap of a shmem or file mapping past the object's size",
                             "pages past i_size SIGBUS (shmem_fault)")


def refuse_mbind(mm: Mm, start: int, end: int) -> None:
    """mbind over a private file mapping: shmem_set_policy puts the policy on the file, and
    the mapping's anonymous copies are then placed by it too (get_vma_policy ->
    shmem_get_policy), not by the VMA's policy the model keeps."""
    for vma in vmas.overlaps(mm, start, end):
        if vma.obj is not None and not vma.shared:
            raise Unmodelled("mbind of a private file mapping",
                             "its copies are placed by the file's shared policy")

