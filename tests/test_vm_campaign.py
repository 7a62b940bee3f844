"""`hmmfuzz fuzz` on the real kernel: a short campaign seeded with a program that oopses the
kernel records the finding once, confirmed on a fresh VM, keeps fuzzing after the crash,
and writes its report; the unguided baseline runs through the same worker."""

from __future__ import annotations

import json

import pytest

from fuzz.cli import main

from conftest import CORPUS

pytestmark = pytest.mark.vm
OOPS = CORPUS / "regressions" / "test_hmm_dmirror_do_read_oops.txt"


def campaign(tmp_path, seeds, *extra) -> int:
    with pytest.raises(SystemExit) as ended:
        main(["fuzz", "--time", "90", "--kernel", "7.2", "--workdir", str(tmp_path / "work"),
              "--seeds", str(seeds), *extra])
    return ended.value.code


def test_a_guided_campaign_confirms_a_crash_once_and_goes_on(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "oops.txt").write_text(OOPS.read_text())
    (seeds / "anon_read.txt").write_text((CORPUS / "hmm_tests_anon_read.txt").read_text())
    assert campaign(tmp_path, seeds) == 1
    work = tmp_path / "work"
    metas = [json.loads(p.read_text()) for p in work.glob("findings/*/finding.json")]
    oops = [m for m in metas if m["signature"] == "crash: BUG: unable to handle page fault in dmirror_do_read"]
    assert len(oops) == 1 and oops[0]["confirmed"] and oops[0]["reproduction"]["reproduced"] >= 1
    stats = json.loads((work / "workers" / "0.json").read_text())
    assert stats["execs"] > 2 + oops[0]["reproduction"]["runs"]  # it went on after the crash
    assert stats["restarts"] >= 1
    assert "Findings" in (work / "report.md").read_text()


def test_known_findings_under_regressions_are_not_seeds(tmp_path):
    assert campaign(tmp_path, CORPUS, "--unguided") in (0, 1)
    staged = {p.name for p in (tmp_path / "work" / "seeds").iterdir()}
    assert "hmm_tests_anon_read.txt" in staged
    assert not any("regressions" in name or "oops" in name for name in staged)
    stats = json.loads((tmp_path / "work" / "workers" / "0.json").read_text())
    assert stats["execs"] > 0
