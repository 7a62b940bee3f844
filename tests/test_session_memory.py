"""The session's side of the leak check: a reading after a program that balances above the
threshold is read again (MSG_REMEASURE), and only then; the answer becomes `again`."""

from __future__ import annotations

import dataclasses
import json
import time

from harness.prog import LEAK_THRESHOLD_PAGES, MemoryCheck, MemoryCounters
from harness.runner import wire
from harness.runner.wire import C, ffi
from harness.vm.session import KernelSession

from conftest import REPO

RECORD = json.loads((REPO / "tests/data/leak_calibration_7.2.json").read_text())["records"][0]
BEFORE = MemoryCounters(**RECORD["before"])
CLEAN_AFTER = MemoryCounters(**RECORD["after"])


def raw(counters: MemoryCounters) -> bytes:
    values = [0] * C.WMEM_NCOUNTERS
    for name, index in (("free", C.WMEM_FREE), ("pcp", C.WMEM_PCP), ("slab", C.WMEM_SLAB),
                        ("pagetables", C.WMEM_PAGETABLES),
                        ("kernel_stack_kb", C.WMEM_KERNEL_STACK_KB),
                        ("zspages", C.WMEM_ZSPAGES), ("memmap", C.WMEM_MEMMAP),
                        ("anon", C.WMEM_ANON), ("file", C.WMEM_FILE),
                        ("device_chunks", C.WMEM_DEVICE_CHUNKS),
                        ("vmalloc_kb", C.WMEM_VMALLOC_KB), ("percpu_kb", C.WMEM_PERCPU_KB)):
        value = getattr(counters, name)
        values[index] = -1 if value is None else value
    return bytes(ffi.buffer(ffi.new("int64_t[]", values)))


class Guest:
    """The runner's channel as far as a second reading goes."""

    def __init__(self, again: MemoryCounters):
        self.sent: list[bytes] = []
        self.again = again

    def send(self, frame: bytes):
        self.sent.append(frame)

    def receive(self, budget: float):
        return C.MSG_MEMORY, raw(self.again)


def test_a_clean_reading_is_not_read_again():
    guest = Guest(CLEAN_AFTER)
    memory = MemoryCheck(BEFORE, CLEAN_AFTER)
    assert KernelSession._second_reading(guest, memory, 10.0, 0.0) is memory
    assert guest.sent == []


def test_a_reading_that_looks_like_a_leak_is_read_again_and_a_transient_one_is_no_leak():
    held = dataclasses.replace(CLEAN_AFTER, free=CLEAN_AFTER.free - 2 * LEAK_THRESHOLD_PAGES)
    guest = Guest(CLEAN_AFTER)  # back 20 ms later
    memory = KernelSession._second_reading(guest, MemoryCheck(BEFORE, held), 10.0,
                                           time.monotonic())
    assert guest.sent == [wire.frame(C.MSG_REMEASURE)]
    assert memory.again == CLEAN_AFTER and memory.leaked_pages() <= LEAK_THRESHOLD_PAGES


def test_a_leak_is_in_both_readings():
    held = dataclasses.replace(CLEAN_AFTER, free=CLEAN_AFTER.free - 2 * LEAK_THRESHOLD_PAGES)
    memory = KernelSession._second_reading(Guest(held), MemoryCheck(BEFORE, held), 10.0,
                                           time.monotonic())
    assert memory.again == held and memory.leaked_pages() > LEAK_THRESHOLD_PAGES
