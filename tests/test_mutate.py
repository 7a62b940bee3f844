"""Campaign mutations keep programs valid and canonical, and any bytes decode to a program."""

from __future__ import annotations

import random

import atheris
from hypothesis import given, settings, strategies as st

import fuzz.mutate as generator
from fuzz.mutate import Chooser, decode, encode, generate, mutate
from harness.prog import format_program, load_program, parse_program
from reference import Simulation

from conftest import CORPUS

SEEDS = [load_program(path) for path in sorted(CORPUS.glob("*.txt"))]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SEEDS) - 1), st.integers(0, len(SEEDS) - 1), st.integers())
def test_a_mutant_is_a_valid_canonical_program(first, second, seed):
    chooser = Chooser(random.Random(seed))
    program = SEEDS[first]
    for _ in range(5):
        program = mutate(program, chooser, other=SEEDS[second])
        text = format_program(program)
        assert format_program(parse_program(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_into_a_valid_program(data):
    program = decode(data, atheris.FuzzedDataProvider)
    assert program.ops
    text = format_program(program)
    assert parse_program(text).ops == program.ops


def test_a_program_without_regions_can_still_be_mutated():
    bare = parse_program("p0 fork p1\n")
    mutant = mutate(bare, Chooser(random.Random(1)))
    assert mutant.ops != bare.ops


def test_encoding_respects_libfuzzers_size_limit():
    big = generate(Chooser(random.Random(7)), max_ops=60)
    data = encode(big, 300)
    assert len(data) <= 300
    assert parse_program(data.decode()).ops == big.ops[:len(parse_program(data.decode()).ops)]


def test_generated_programs_are_checked_to_their_end_by_the_model_of_their_kernel(monkeypatch):
    monkeypatch.setattr(generator, "REFUSED_KEPT_PERCENT", 0)
    for release in ("7.2.0", "6.1.0"):
        chooser = Chooser(random.Random(release))
        for _ in range(20):
            program = generate(chooser, kernel_release=release)
            assert Simulation(program, release).refused is None, format_program(program)


def test_now_and_then_an_op_the_model_refuses_is_kept():
    chooser = Chooser(random.Random(5))
    refused = [Simulation(generate(chooser)).refused for _ in range(60)]
    assert 0 < sum(r is not None for r in refused) <= 15


def test_unguided_generation_still_reaches_ops_the_model_refuses():
    chooser = Chooser(random.Random(3))
    refused = [Simulation(generate(chooser, kernel_release=None)).refused for _ in range(40)]
    assert any(refused)


def test_random_programs_of_every_op_are_distinct_and_the_same_for_the_same_seed():
    # the Hypothesis sampler draws small programs again and again; `hmmfuzz random --ops
    # all` runs each program once
    from fuzz.cli import _random_programs

    drawn = [format_program(p) for p in _random_programs("all", 60, seed=7)]
    assert len(drawn) == 60 and len(set(drawn)) == 60
    assert drawn == [format_program(p) for p in _random_programs("all", 60, seed=7)]
