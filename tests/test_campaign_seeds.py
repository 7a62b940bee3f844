"""What a campaign hands libFuzzer as seeds: the user's programs in canonical text (no
comments, so a commented scenario is not run after every generated seed: libFuzzer runs
seeds smallest first), known findings left out, a seed that does not parse named."""

from __future__ import annotations

from pathlib import Path

from fuzz.campaign import GENERATED_SEEDS, Campaign
from harness.prog import format_program, load_program

from conftest import CORPUS


def staged_seeds(tmp_path, seed_dir) -> tuple[dict[str, str], list[str]]:
    said = []
    campaign = Campaign(None, tmp_path / "work", [seed_dir], jobs=1, seconds=1,
                        accel="tcg", echo=said.append)
    campaign._stage_seeds()
    staged = {p.name: p.read_text() for p in (tmp_path / "work" / "seeds").iterdir()}
    return staged, said


def test_seeds_are_staged_as_canonical_programs_and_regressions_are_left_out(tmp_path):
    staged, said = staged_seeds(tmp_path, CORPUS)
    scenario = CORPUS / "hmm_tests_anon_read.txt"
    program = load_program(scenario)
    assert staged[scenario.name] == format_program(program.with_ops(program.ops))
    assert "#" not in staged[scenario.name] and "#" in scenario.read_text()
    assert not any(name.startswith("regressions") for name in staged)
    assert sum(name.startswith("generated-") for name in staged) == GENERATED_SEEDS
    assert said == []


def test_a_seed_that_does_not_parse_is_named_with_its_line_and_skipped(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "good.txt").write_text("region a pages=1\np0 map a[0:1]\n")
    (seeds / "bad.txt").write_text("region a pages=1\np0 map a[0:1]\np0 dev_read d0 a[0:1]\n")
    staged, said = staged_seeds(tmp_path, seeds)
    assert "good.txt" in staged and "bad.txt" not in staged
    assert said == [f"input error: {Path(seeds / 'bad.txt')}:3: fd 'd0' is not open in p0 "
                    "(seed skipped)"]
