"""One op at a time: what it does to the World and what it may report.

`step(world, op, places)` returns the allowed outcomes as (Expect, next World) pairs; nearly
every op has exactly one and changes `world` in place. The CPU-side ops are here, the
dmirror ioctls in hmm.py.
"""

from __future__ import annotations

from harness.prog import (
    CheckExclusive, Content, CpuRead, CpuWrite, DevRead, DevWrite, Exclusive, Fork, Map,
    Mprotect, Munmap, Op, OpenDevice, Snapshot,
)

from . import hmm, mm as cpu, vma as vmas
from .expect import EEXIST, SEGV, WRITTEN, Expect, done, fail, read_page
from .places import Places
from .state import Dmirror, World

Outcome = tuple[Expect, World]


def _map(world: World, op: Map, places: Places) -> list[Outcome]:
    mm = world.mms[world.procs[op.proc]]
    start, end = places.vpns(op.range)
    taken = vmas.overlaps(mm, start, end)
    if taken:
        return [(fail(EEXIST, f"do_mmap: MAP_FIXED_NOREPLACE and {places.name(taken[0].start)} "
                              "is already mapped -> -EEXIST"), world)]
    vmas.map_new(mm, start, end, world.profile)
    return [(done("do_mmap: the range is free"), world)]


def _munmap(world: World, op: Munmap, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    if not vmas.overlaps(mm, start, end):
        # do_vmi_munmap: vma_find() finds no VMA in the range -> return 0, nothing happens.
        return [(done("do_vmi_munmap: an aligned range always succeeds"), world)]
    for vma, vpn in vmas.unmap(mm, start, end):
        cpu.split_pmd(world, mm_id, vma, vpn)
    cpu.zap(world, mm_id, mm, start, end)
    return [(done("do_vmi_munmap: an aligned range always succeeds"), world)]


def _mprotect(world: World, op: Mprotect, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    err, changed, splits = vmas.mprotect(mm, start, end, op.prot, world.profile)
    for vma, vpn in splits:
        cpu.split_pmd(world, mm_id, vma, vpn)
    for piece_start, piece_end in changed:
        cpu.change_protection(world, mm_id, mm, piece_start, piece_end)
    if err:
        return [(fail(err, "do_mprotect_pkey: part of the range is not mapped -> -ENOMEM "
                           "(VMAs before the hole keep their new protection)"), world)]
    return [(done("do_mprotect_pkey: the whole range is mapped"), world)]


def _write(world: World, op: CpuWrite, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    pages, why = [], []
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        if vma is None or not vma.prot.writable:
            pages.append(SEGV)
            why.append(_segv_why(places.name(vpn), vma, "write"))
            continue
        cpu.write_fault(world, mm_id, mm, vma, vpn)
        world.set_content(mm.ptes[vpn].folio, Content(op.seed, vpn))
        pages.append(WRITTEN)
        why.append(f"{places.name(vpn)} is in a writable VMA")
    return [(done(CPU_ERRNO, pages=tuple(pages), page_why=tuple(why)), world)]


def _read(world: World, op: CpuRead, places: Places) -> list[Outcome]:
    mm_id = world.procs[op.proc]
    mm = world.mms[mm_id]
    start, end = places.vpns(op.range)
    pages, why = [], []
    for vpn in range(start, end):
        vma = mm.vma_at(vpn)
        if vma is None or not vma.prot.readable:
            pages.append(SEGV)
            why.append(_segv_why(places.name(vpn), vma, "read"))
            continue
        cpu.read_fault(world, mm_id, mm, vma, vpn)
        content = world.content(mm.ptes[vpn].folio)
        pages.append(read_page(content))
        why.append(f"{places.name(vpn)} holds {content}")
    return [(done(CPU_ERRNO, pages=tuple(pages), page_why=tuple(why)), world)]


CPU_ERRNO = "CPU loads and stores report a signal per page, never an errno"


def _segv_why(name: str, vma, access: str) -> str:
    if vma is None:
        return f"{name} is not mapped: the {access} fault finds no VMA (SIGSEGV)"
    return f"{name}'s VMA is {vma.prot.value}: access_error refuses the {access} (SIGSEGV)"


def _fork(world: World, op: Fork, places: Places) -> list[Outcome]:
    parent = world.procs[op.proc]
    child = world.new_id()
    world.procs[op.child] = child
    cpu.fork(world, parent, child)
    for (proc, name), mirror_id in list(world.fds.items()):
        if proc == op.proc:
            # The child shares the parent's open files: the same dmirror, still bound to the
            # parent's mm (dmirror_fops_open took current->mm of the opener).
            world.fds[(op.child, name)] = mirror_id
    return [(done("fork succeeds"), world)]


def _open(world: World, op: OpenDevice, places: Places) -> list[Outcome]:
    mirror_id = world.new_id()
    world.mirrors[mirror_id] = Dmirror(op.device, world.procs[op.proc])
    world.fds[(op.proc, op.fd)] = mirror_id
    return [(done("dmirror_fops_open succeeds"), world)]


_STEPS = {
    Map: _map, Munmap: _munmap, Mprotect: _mprotect, CpuWrite: _write, CpuRead: _read,
    Fork: _fork, OpenDevice: _open, DevRead: hmm.dev_read, DevWrite: hmm.dev_write,
    Snapshot: hmm.snapshot, Exclusive: hmm.exclusive, CheckExclusive: hmm.check_exclusive,
}


def step(world: World, op: Op, places: Places) -> list[Outcome]:
    return _STEPS[type(op)](world, op, places)
