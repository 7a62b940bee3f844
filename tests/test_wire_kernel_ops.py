"""The wire format of the kernel-wide ops and their observations: what the host encodes is
what runner.c reads, and result values and memory counters decode into the observations."""

from __future__ import annotations

import pytest

from harness.prog import MemoryCounters, parse_program
from harness.prog.observation import SMAPS_FIELDS
from harness.runner import wire
from harness.runner.wire import C, ffi

PROGRAM = parse_program("""\
region a pages=8
p0 map a[0:8]
p0 thp madvise defer+madvise
p0 move_pages a[0:4] 1
p0 move_pages a[0:4]
p0 mbind a[2:8] 0
p0 uffd_wp a[0:2] on
p0 uffd_wp a[0:2] off
p0 compact
p0 clear_soft_dirty
p0 uffd_register a[0:8]
p0 uffd_unregister a[0:8]
p0 ksm_merge
p0 smaps a[0:8]
""")


def test_each_kernel_op_is_encoded_with_its_argument():
    ops = wire.encode_ops(PROGRAM)
    kinds = [op["kind"] for op in ops[1:]]
    assert kinds == [C.WOP_THP, C.WOP_MOVE_PAGES, C.WOP_MOVE_PAGES, C.WOP_MBIND, C.WOP_UFFD_WP,
                     C.WOP_UFFD_WP, C.WOP_COMPACT, C.WOP_CLEAR_SOFT_DIRTY, C.WOP_UFFD_REGISTER,
                     C.WOP_UFFD_UNREGISTER, C.WOP_KSM_MERGE, C.WOP_SMAPS]
    assert ops[1]["arg"] == C.WTHP_MADVISE | C.WDEFRAG_DEFER_MADVISE << 8
    assert ops[2]["arg"] == 1 and ops[3]["arg"] == C.WIRE_NODE_QUERY
    assert ops[4]["arg"] == 0 and ops[4]["npages"] == 6
    assert ops[4]["addr"] == PROGRAM.regions["a"].address + 2 * 4096
    assert (ops[5]["arg"], ops[6]["arg"]) == (1, 0)


def result(kind: int, values: list[int]) -> bytes:
    header = ffi.new("struct wire_result *", {"op_index": 3, "nvalues": len(values),
                                              "values_kind": kind})
    return bytes(ffi.buffer(header)) + bytes(ffi.buffer(ffi.new("int64_t[]", values)))


def test_a_move_pages_status_array_decodes_per_page():
    index, decoded = wire.decode_result(result(C.WVAL_NODE_STATUS, [1, 1, -2, -14]))
    assert index == 3 and decoded.node_status == (1, 1, -2, -14)
    assert decoded.smaps is None and decoded.ksm is None and decoded.pagemap is None


def test_smaps_records_decode_per_vma_without_absent_fields():
    first = [0x1000, 0x3000] + [8] * C.WSMAPS_NFIELDS
    second = [0x3000, 0x4000] + [-1] * C.WSMAPS_NFIELDS
    second[2 + C.WSMAPS_SWAP] = 4
    _, decoded = wire.decode_result(result(C.WVAL_SMAPS, first + second))
    vma, other = decoded.smaps
    assert (vma.start, vma.end) == (0x1000, 0x3000)
    assert dict(vma.fields) == {name: 8 for name in SMAPS_FIELDS}
    assert other.fields == (("Swap", 4),) and other["Swap"] == 4


def test_a_smaps_payload_cut_mid_record_is_a_protocol_error():
    with pytest.raises(wire.ProtocolError, match="not whole VMA records"):
        wire.decode_result(result(C.WVAL_SMAPS, [0x1000, 0x2000, 4]))


def test_ksm_counters_decode_by_name():
    _, decoded = wire.decode_result(result(C.WVAL_KSM, [3, 5, 11]))
    assert (decoded.ksm.full_scans, decoded.ksm.pages_shared, decoded.ksm.pages_sharing) == (3, 5, 11)


def test_memory_counters_travel_with_done_and_a_missing_memmap_is_none():
    before = list(range(100, 100 + C.WMEM_NCOUNTERS))
    after = list(before)
    after[C.WMEM_MEMMAP] = -1
    done = ffi.new("struct wire_done *", {"status": C.DONE_COMPLETED, "measured": 1,
                                          "memory_before": before, "memory_after": after})
    decoded = wire.decode_done(bytes(ffi.buffer(done)))
    assert decoded.memory.before == MemoryCounters(
        free=100 + C.WMEM_FREE, pcp=100 + C.WMEM_PCP, slab=100 + C.WMEM_SLAB,
        pagetables=100 + C.WMEM_PAGETABLES, kernel_stack_kb=100 + C.WMEM_KERNEL_STACK_KB,
        zspages=100 + C.WMEM_ZSPAGES, memmap=100 + C.WMEM_MEMMAP, anon=100 + C.WMEM_ANON,
        file=100 + C.WMEM_FILE, device_chunks=100 + C.WMEM_DEVICE_CHUNKS,
        vmalloc_kb=100 + C.WMEM_VMALLOC_KB, percpu_kb=100 + C.WMEM_PERCPU_KB)
    # the second reading comes only when asked for (MSG_REMEASURE), as a MSG_MEMORY
    assert decoded.memory.after.memmap is None and decoded.memory.again is None
    again = wire.decode_memory(bytes(ffi.buffer(ffi.new("int64_t[]", before))))
    assert again == decoded.memory.before


def test_a_run_that_was_not_measured_has_no_memory():
    done = ffi.new("struct wire_done *", {"status": C.DONE_HUNG})
    assert wire.decode_done(bytes(ffi.buffer(done))).memory is None
