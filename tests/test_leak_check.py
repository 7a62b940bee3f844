"""The per-program leak check's decision, on memory counters measured on the real kernels
(tests/data/leak_calibration_<kernel>.json, recorded by tests/leak_calibration.py over the
corpus and random programs): clean programs never leak, a program whose pages do not come
back does, and a device chunk that comes or goes on 6.1 makes the balance unknowable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fuzz.judge import LEAK_THRESHOLD_PAGES, judge, leak_verdict, leaked_pages, Status
from fuzz.minimize import signature
from harness.prog import MemoryCheck, MemoryCounters, OpResult, Trace, parse_program

DATA = Path(__file__).parent / "data"
CALIBRATIONS = sorted(DATA.glob("leak_calibration_*.json"))


def records():
    for path in CALIBRATIONS:
        for record in json.loads(path.read_text())["records"]:
            yield path.stem.removeprefix("leak_calibration_"), record


def check_of(record) -> MemoryCheck:
    again = record.get("again")
    return MemoryCheck(MemoryCounters(**record["before"]), MemoryCounters(**record["after"]),
                       MemoryCounters(**again) if again else None)


def test_there_is_calibration_data_for_every_kernel():
    assert {path.stem.removeprefix("leak_calibration_") for path in CALIBRATIONS} == {
        "6.1", "6.12", "7.2"}


@pytest.mark.parametrize("kernel, record", list(records()),
                         ids=[f"{k}-{r['program']}" for k, r in records()])
def test_no_clean_program_is_a_leak(kernel, record):
    memory = check_of(record)
    assert leak_verdict(memory) is None, (kernel, record["program"], leaked_pages(memory))


def _taken(memory: MemoryCheck, pages: int, readings: int = 2) -> MemoryCheck:
    """The same run, had `pages` more pages left the allocator and not come back by the
    first reading after it (`readings=1`: back by the second) or by either (2)."""
    after = dataclasses.replace(memory.after, free=memory.after.free - pages)
    again = memory.again if readings == 1 else dataclasses.replace(
        memory.again, free=memory.again.free - pages)
    return MemoryCheck(memory.before, after, again)


def _conclusive(kernel: str):
    return [r for k, r in records() if k == kernel and leaked_pages(check_of(r)) is not None]


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.2"])
def test_a_program_that_keeps_a_buffer_of_pages_leaks_on_every_measured_run(kernel):
    # the noisiest clean run of the kernel plus one hmm-tests buffer (1024 pages) gone
    runs = _conclusive(kernel)
    noisiest = max(runs, key=lambda r: abs(leaked_pages(check_of(r))))
    for record in (noisiest, runs[0], runs[-1]):
        memory = check_of(record)
        leaked = leak_verdict(_taken(memory, 1024))
        assert leaked is not None and leaked == 1024 + leaked_pages(memory)


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.2"])
def test_pages_held_for_a_moment_after_the_program_are_no_leak(kernel):
    for record in _conclusive(kernel)[:20]:
        memory = check_of(record)
        assert leak_verdict(_taken(memory, 1024, readings=1)) is None


def test_pages_the_kernel_says_it_holds_are_no_leak():
    _, record = next(records())
    memory = check_of(record)
    slab_grew = MemoryCheck(memory.before, *(
        dataclasses.replace(after, free=after.free - 1000, slab=after.slab + 1000)
        for after in (memory.after, memory.again)))
    assert leaked_pages(slab_grew) == leaked_pages(memory)
    assert leak_verdict(slab_grew) is None


def test_a_device_chunk_that_came_or_went_without_a_memmap_counter_is_inconclusive():
    _, record = next(records())
    memory = check_of(record)
    chunk = MemoryCheck(dataclasses.replace(memory.before, memmap=None), *(
        dataclasses.replace(after, memmap=None, device_chunks=memory.before.device_chunks + 1,
                            free=after.free - 5000)
        for after in (memory.after, memory.again)))
    assert leaked_pages(chunk) is None and leak_verdict(chunk) is None


def test_a_leak_is_a_finding_of_the_whole_program():
    program = parse_program("region a pages=1\np0 map a[0:1]\n", "leaky.txt")
    _, record = next(records())
    memory = _taken(check_of(record), 4 * LEAK_THRESHOLD_PAGES)
    # the model refuses nothing here and agrees with the one op: only the leak is wrong
    verdict = judge(program, Trace("7.2.13", (OpResult(),), memory=memory))
    assert verdict.leak and verdict.status is Status.DIVERGENCE
    assert verdict.leak_signature == "leak: pages leaked"
    assert signature(verdict) == "leak: pages leaked"  # one finding, whatever the count
    assert any(f"LEAK pages leaked: {verdict.leak}" in line for line in verdict.lines())
    clean = judge(program, Trace("7.2.13", (OpResult(),), memory=check_of(record)))
    assert clean.leak is None and clean.status is Status.OK and signature(clean) is None


def test_only_a_reading_that_looks_like_a_leak_is_read_again():
    # The second reading costs a program a pause: the session asks for it only when the
    # first balance is beyond the noise (harness.prog.NOISE_PAGES), never for a clean run.
    for _, record in list(records())[:50]:
        memory = check_of(record)
        first = dataclasses.replace(memory, again=None)
        assert not first.needs_second_reading()
        suspect = _taken(first, 1024, readings=1)
        assert suspect.needs_second_reading() or first.leaked_pages() is None
        if suspect.needs_second_reading():
            back = dataclasses.replace(suspect, again=memory.after)
            assert not back.needs_second_reading() and leak_verdict(back) is None
            still = dataclasses.replace(suspect, again=suspect.after)
            assert leak_verdict(still) == first.leaked_pages() + 1024
