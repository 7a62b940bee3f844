"""The user-visible state the model keeps: processes, address spaces, folios, device mirrors.

Everything a later op can observe is here, and nothing else. Page numbers are absolute
virtual page numbers (vpn = address >> 12), so the same number names the same page in every
process. Values stored in the dicts are immutable; a World is cloned by copying its dicts,
which keeps the rare branching of the state set (see check.py) cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from harness.prog import ZERO, Content, Prot
from harness.prog.ops import THP_DEFAULT, DeviceOp

from .profile import NEWEST, Profile

ZERO_FOLIO = 0  # folio id of the shared zero page; never in World.folios


# ------------------------------------------------------------------ page table entries

class Kind(Enum):
    ZERO = "zero"            # the shared zero page, mapped read-only by a read fault
    PRESENT = "present"      # an anonymous folio
    EXCLUSIVE = "exclusive"  # a device-exclusive entry (make_device_exclusive) for a folio
    DEVICE = "device"        # a device-private entry (migrate_to_dev) for a device folio
    SWAP = "swap"            # a swap entry (madvise pageout into the zram swap) for a slot


@dataclass(frozen=True)
class Pte:
    """A populated page table entry; a missing dict key is pte_none. For a device-exclusive
    entry `writable` is the entry's own write permission (kept only by older kernels, see
    profile.py); for a device-private entry it is the entry's write bit
    (make_writable_device_private_entry / make_readable_device_private_entry)."""

    kind: Kind
    folio: int = ZERO_FOLIO
    writable: bool = False
    # The PTE's dirty bit is known to be clear: mapped by a swap-in read fault (do_swap_page
    # sets pte_mkdirty only for a write) or cleaned by madvise free (clear_young_dirty_ptes).
    # Elsewhere the model does not follow the bit (a write fault or store sets it).
    clean: bool = False
    # The soft-dirty bit (pte_soft_dirty / pte_swp_soft_dirty). It matters only once a
    # clear_soft_dirty write cleared it (and VM_SOFTDIRTY, Vma.softdirty): then a write
    # fault (pte_mkdirty) or an mremap move (move_soft_dirty_pte) sets it again, and
    # nothing makes the PTE writable without a fault while it is clear
    # (pte_needs_soft_dirty_wp).
    soft_dirty: bool = True
    # The uffd-wp bit (pte_uffd_wp), set by UFFDIO_WRITEPROTECT on present PTEs (the zero
    # page included); see uffd.py. Such a PTE is read-only.
    uffd_wp: bool = False


# do_anonymous_page maps the zero page for a read: no pte_mkdirty, so no soft-dirty bit.
ZERO_PTE = Pte(Kind.ZERO, soft_dirty=False)


class Lazyfree(Enum):
    """A folio madvise(MADV_FREE) made lazyfree (folio_mark_lazyfree: clean and no longer
    swap-backed), as reclaim will find it (try_to_unmap_one's "MADV_FREE page check")."""

    CLEAN = "clean"      # nothing dirtied it since: reclaim discards it (the page reads zero)
    DIRTY = "dirty"      # a CPU store dirtied the PTE: reclaim maps it again, swap-backed
    UNKNOWN = "unknown"  # an op the model does not follow the dirty bit through touched it


@dataclass(frozen=True)
class Folio:
    """An order-0 anonymous folio, or a swap slot holding a swapped-out page's content.

    `mapcount` counts PTEs mapping it (a device-exclusive entry still counts: it keeps the
    rmap; for a swap slot: the swap entries referring to it, its swap count). `exclusive` is
    PageAnonExclusive: set while only one process can map it, cleared by fork
    (folio_try_dup_anon_rmap_pte), set again when a write fault reuses it; for a swap slot
    it is the swap PTE's exclusive bit (pte_swp_exclusive: try_to_unmap_one sets it for a
    PageAnonExclusive page, copy_nonpresent_pte clears it at fork).
    """

    content: Content
    mapcount: int = 1
    exclusive: bool = True
    # A device-private folio (ZONE_DEVICE page of a dmirror device): the device whose memory
    # holds it and the dmirror that migrated it there (dmirror_migrate_alloc_and_copy stores
    # that dmirror in the backing page's zone_device_data; dmirror_devmem_fault uses it).
    device: str | None = None
    owner: int | None = None
    lazyfree: Lazyfree | None = None
    # A swap slot (Kind.SWAP entries point at it), not a page. `swapcache`: a folio for the
    # slot sits in the swap cache (madvise willneed read it in), which decides how older
    # kernels swap it in (reclaim.swap_in).
    swapped: bool = False
    swapcache: bool = False
    # A swap slot shared by several processes (after fork) that one of them swapped in: its
    # swap-cache folio (`cache`, a folio id, mapped or not: mapcount 0); the other
    # processes' swap entries still refer to the slot, and a swap-in of one of them maps
    # that same folio (swap_cache_get_folio). For that folio, `swap_slot` names the slot:
    # it stays in the swap cache while any swap entry refers to the slot (folio_free_swap
    # fails while folio_maybe_swapped), which decides do_wp_page and madvise free.
    cache: int | None = None
    swap_slot: int | None = None
    # 6.x only: swap readahead (swapin_readahead -> swap_vma_readahead, on a swap-in that
    # misses the swap cache) may have read this slot into the swap cache; its window
    # depends on the VMA's readahead history, which the model does not keep. `node` is
    # then where that folio would be.
    maybe_cached: bool = False
    # The NUMA node of the page (numa.py): where it was allocated (the VMA's mbind policy,
    # else the local node of CPU 0, where the runner pins every program process) or where a
    # migration put it. None: the kernel may have placed it on either of two nodes (a
    # reuse-or-copy write fault under a policy, mm._write_protected_anon); a move_pages
    # query then allows both and the model learns the answer (World.learn). For a swap
    # slot in the swap cache: the node of that swap-cache folio.
    node: int | None = 0
    # A KSM folio (folio_test_ksm): ksmd merged identical pages into it (ksm.py). It is
    # mapped read-only wherever it is mapped and never PageAnonExclusive; a write or an
    # unshare fault copies it (wp_can_reuse_anon_folio refuses KSM folios).
    ksm: bool = False
    # A page of a transparent huge page (thp.py): the model folio id of its head page and
    # its index in the 2 MiB folio. Each page keeps its own content and mapcount (the
    # precise page mapcount kpagecount shows); PFNs are the head's plus the index.
    thp: int | None = None
    thp_index: int = 0
    # A page-cache folio of a shmem object (shmem.py): not anonymous, owned by the object
    # (World.objects) whether mapped or not, so `mapcount` may be 0. `dirty`: PG_dirty of
    # a page-cache folio (a store, a write fault or a FOLL_WRITE GUP made it so; only
    # writeback to swap clears it); `swapped` then means the object's page is in swap.
    page_cache: bool = False
    dirty: bool = False


# ------------------------------------------------------------------ VMAs

@dataclass(frozen=True)
class Vma:
    """An anonymous private VMA over [start, end) (vpns).

    Only what decides observable behaviour is kept: the protection, VM_ACCOUNT (it takes part
    in VMA merging and anon_vma sharing), the anon_vma identity (fork copies page tables only
    for VMAs that have one: vma_needs_copy) and whether that anon_vma came from a fork, i.e. the
    anon_vma_chain is not singular (vma_is_fork_child), which forbids some merges.
    """

    start: int
    end: int
    prot: Prot
    account: bool = True
    anon: int | None = None
    fork_child: bool = False
    # The other vm_flags a program can set (madvise, mlock): "dontcopy" (VM_DONTCOPY),
    # "wipeonfork", "mergeable", "hugepage", "nohugepage", "locked" (VM_LOCKED). Like the
    # protection they take part in merging (is_mergeable_vma) and anon_vma sharing
    # (anon_vma_compatible).
    flags: frozenset = frozenset()
    # vm_pgoff - start, in pages: 0 for a VMA mmap made (an anonymous VMA's vm_pgoff is its
    # address), the old offset for one mremap moved (copy_vma keeps vm_pgoff once the VMA
    # has an anon_vma). Merges and anon_vma sharing need contiguous vm_pgoff: equal shifts.
    shift: int = 0
    # VM_SOFTDIRTY: set on every VMA mmap creates or grows (__mmap_complete), cleared by
    # clear_soft_dirty; a sticky flag, so it does not keep VMAs from merging and a merge
    # keeps it if any part had it (VMA_STICKY_FLAGS).
    softdirty: bool = True
    # The shmem object mapped (vm_file; shmem.py): None for anonymous memory. `shared` is
    # VM_SHARED (map shared, map memfd); a private file mapping (map file) has an object
    # but COWs into anonymous folios. The object page of vpn is vpn + shift (vm_pgoff).
    obj: str | None = None
    shared: bool = False
    # vm_page_prot lacks the write bit of a shared writable VMA: vma_wants_writenotify
    # (soft-dirty tracking, VM_SOFTDIRTY clear) when vma_set_page_prot last ran (mmap,
    # mprotect, clear_soft_dirty); other merges keep the surviving VMA's vm_page_prot.
    writenotify: bool = False

    def __contains__(self, vpn: int) -> bool:
        return self.start <= vpn < self.end


# ------------------------------------------------------------------ device mirror

class Tag(Enum):
    """The tag of a dmirror page table entry (DPT_XA_TAG_* in lib/test_hmm.c)."""

    READ = "read"        # untagged pointer: readable by the device
    WRITE = "write"      # DPT_XA_TAG_WRITE: the CPU PTE was writable when it was mirrored
    ATOMIC = "atomic"    # DPT_XA_TAG_ATOMIC: stored by dmirror_atomic_map after EXCLUSIVE


@dataclass(frozen=True)
class Entry:
    """One mirror entry. `maybe_gone`: the kernel may have erased it (see
    mm._write_protected_anon: reuse or copy of a folio mapped once but not exclusive); the
    ops that read the table resolve it (hmm.settle)."""

    folio: int
    tag: Tag
    maybe_gone: bool = False


# An entry whose page was freed under it: a dmirror of the same device ignores the
# MMU_NOTIFY_MIGRATE event its own device raises (dmirror_interval_invalidate), so when
# another dmirror of that device migrates the page, this one keeps a pointer to the freed
# source page. Reading it reads freed memory: the model refuses (hmm.py).
STALE = -1


@dataclass
class Mm:
    vmas: list[Vma] = field(default_factory=list)
    ptes: dict[int, Pte] = field(default_factory=dict)
    # False once the last process using it exited (mm_users reached 0): a dmirror still
    # bound to it fails mmget_not_zero().
    alive: bool = True
    # PMD-level state (thp.py), by PMD index (vpn // 512): the PMD entries that map a THP
    # or the huge zero page (their 512 pages are also in `ptes`, as they read), and
    # which PMDs hold a PTE table (True) or might (None): a fault maps a THP only where
    # the PMD is none.
    pmds: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    # The vpns holding a uffd-wp PTE marker (PTE_MARKER_UFFD_WP, uffd_shmem.py): not
    # pte_none, but no page either; only in shmem and file VMAs registered for WP.
    markers: set = field(default_factory=set)

    def clone(self) -> "Mm":
        return Mm(list(self.vmas), dict(self.ptes), self.alive, dict(self.pmds),
                  dict(self.tables), set(self.markers))

    def vma_at(self, vpn: int) -> Vma | None:
        for vma in self.vmas:
            if vma.start <= vpn < vma.end:
                return vma
            if vma.start > vpn:
                return None
        return None


@dataclass
class Dmirror:
    """An open /dev/hmm_dmirrorN file: its device, the mm of the process that opened it
    (dmirror_fops_open: current->mm) and its mirror table (the `pt` xarray)."""

    device: str
    mm: int
    table: dict[int, Entry] = field(default_factory=dict)
    flags: int = 0        # HMM_DMIRROR_FLAGS (bit 0: HMM_DMIRROR_FLAG_FAIL_ALLOC)

    def clone(self) -> "Dmirror":
        return Dmirror(self.device, self.mm, dict(self.table), self.flags)


@dataclass
class World:
    procs: dict[str, int]                 # process -> mm id
    fds: dict[tuple[str, str], int]       # (process, fd name) -> dmirror id
    mms: dict[int, Mm]
    folios: dict[int, Folio]
    mirrors: dict[int, Dmirror]
    next_id: int = 1                      # folio, anon_vma, mm and dmirror ids
    profile: Profile = NEWEST             # the kernel version's semantics (profile.py)
    # What `pagemap` ops showed of physical frames, learned from the kernel's answers (see
    # pagemap.py): folio id -> PFN, device folio id -> device PFN, and the zero page's PFN.
    pfns: dict = field(default_factory=dict)
    # The mms KSM has an mm_slot for (ksm.py): registered by madvise(MADV_MERGEABLE)
    # (__ksm_enter) or by fork of a registered mm (ksm_fork), dropped by ksmd's scan once
    # the mm has no VM_MERGEABLE VMA left or has exited. Dead mms may stay in it.
    ksm_slots: frozenset = frozenset()
    # shmem objects (shmem.py): object -> {object page: page-cache folio id}; and the
    # objects' shared memory policies (mbind: shmem_set_policy): (object, page) -> node
    objects: dict = field(default_factory=dict)
    object_policy: dict = field(default_factory=dict)
    # /sys/kernel/mm/transparent_hugepage/{enabled,defrag} (harness.prog.ops.THP_DEFAULT
    # at the start of every program) and whether THP was on at some point (thp.set_mode)
    thp: tuple = THP_DEFAULT + (False,)

    @classmethod
    def initial(cls, profile: Profile = NEWEST) -> "World":
        return cls(procs={"p0": 1}, fds={}, mms={1: Mm()}, folios={}, mirrors={}, next_id=2,
                   profile=profile)

    def clone(self) -> "World":
        return World(
            procs=dict(self.procs),
            fds=dict(self.fds),
            mms={k: mm.clone() for k, mm in self.mms.items()},
            folios=dict(self.folios),
            mirrors={k: d.clone() for k, d in self.mirrors.items()},
            next_id=self.next_id,
            profile=self.profile,
            pfns=dict(self.pfns),
            ksm_slots=self.ksm_slots,
            objects={k: dict(pages) for k, pages in self.objects.items()},
            object_policy=dict(self.object_policy),
            thp=self.thp,
        )

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -------------------------------------------------------------- folios

    def content(self, folio: int) -> Content:
        return ZERO if folio == ZERO_FOLIO else self.folios[folio].content

    def new_folio(self, content: Content, node: int = 0) -> int:
        fid = self.new_id()
        self.folios[fid] = Folio(content, node=node)
        return fid

    def set_content(self, folio: int, content: Content) -> None:
        self.folios[folio] = replace(self.folios[folio], content=content)

    def unmap_folio(self, folio: int) -> None:
        """One PTE stopped mapping the folio; the last one frees it."""
        if folio == ZERO_FOLIO:
            return
        f = self.folios[folio]
        if f.page_cache:
            # a page-cache folio stays in its object (shmem.py)
            self.folios[folio] = replace(f, mapcount=f.mapcount - 1)
            return
        if f.mapcount > 1:
            self.folios[folio] = replace(f, mapcount=f.mapcount - 1)
            return
        if f.swap_slot is not None:
            # The last mapping of a swap-cache folio whose slot other swap entries still
            # refer to: free_swap_cache cannot free it (folio_free_swap: still swapped), so
            # it stays in the swap cache, unmapped, for their swap-in.
            self.folios[folio] = replace(f, mapcount=0)
            return
        del self.folios[folio]
        if f.cache is not None:
            cached = self.folios[f.cache]
            if cached.mapcount == 0:
                # The slot's last swap entry went: swap_put_entries_direct /
                # free_swap_and_cache reclaim the unmapped swap-cache folio with it.
                del self.folios[f.cache]
            else:
                # ... but a swap-cache folio still mapped stays, and the next
                # folio_free_swap (do_wp_page, madvise free, free_swap_cache) succeeds:
                # from here on it is an ordinary folio.
                self.folios[f.cache] = replace(cached, swap_slot=None)

    # -------------------------------------------------------------- mirrors

    def mirrors_of(self, mm: int) -> list[Dmirror]:
        return [d for d in self.mirrors.values() if d.mm == mm]

    def acting_mm(self, op) -> "Mm | None":
        """The mm an op works on: a device op's, the mm its fd mirrors (dmirror_fops_open
        bound it to the opener's); any other op's, its own process's. None for a device op
        through an fd its process does not hold."""
        if isinstance(op, DeviceOp):
            mirror_id = self.fds.get((op.proc, op.fd))
            return None if mirror_id is None else self.mms[self.mirrors[mirror_id].mm]
        return self.mms[self.procs[op.proc]]

    def signature(self) -> tuple:
        """A hashable summary used to drop duplicate states from a state set."""
        return (
            tuple(sorted(self.procs.items())),
            tuple(sorted(self.fds.items())),
            tuple((k, mm.alive, tuple(mm.vmas), tuple(sorted(mm.ptes.items(), key=_key0)),
                   tuple(sorted(mm.pmds.items())), tuple(sorted(mm.tables.items(), key=repr)),
                   tuple(sorted(mm.markers)))
                  for k, mm in sorted(self.mms.items())),
            tuple(sorted(self.folios.items(), key=_key0)),
            tuple((k, d.device, d.mm, d.flags, tuple(sorted(d.table.items(), key=_key0)))
                  for k, d in sorted(self.mirrors.items())),
            tuple(sorted(self.pfns.items(), key=repr)),
            tuple(sorted(self.ksm_slots)),
            tuple((k, tuple(sorted(pages.items()))) for k, pages in sorted(self.objects.items())),
            tuple(sorted(self.object_policy.items())),
            self.thp,
        )

    def learn(self, expect, seen) -> None:
        """After `seen` matched `expect`: remember what it showed (pagemap PFNs, the nodes
        of pages the model did not know the node of)."""
        if expect.pagemap is not None and seen.pagemap is not None:
            from .pagemap import learn
            learn(self, expect.pagemap, seen.pagemap)
        if expect.node_folios and seen.node_status is not None:
            for folio_id, status in zip(expect.node_folios, seen.node_status):
                folio = self.folios.get(folio_id) if folio_id is not None else None
                if folio is not None and folio.node is None and status >= 0:
                    self.folios[folio_id] = replace(folio, node=status)


def _key0(item):
    return item[0]
