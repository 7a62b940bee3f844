"""Unguided random runs on the real kernel, archived: judging the archive again gives the
same verdicts as judging the runs live, and the counts say how much the model checked."""

from __future__ import annotations

import pytest

from fuzz.archive import runs
from fuzz.cli import main

pytestmark = pytest.mark.vm


def test_an_archived_random_run_judges_again_to_the_same_counts(tmp_path, capsys):
    archive = tmp_path / "runs.pkl"
    codes = []
    for command in (["random", "--count", "6", "--seed", "3", "--ops", "modelled", "--kernel", "7.2",
                     "--workdir", str(tmp_path / "w"), "--archive", str(archive)],
                    ["rejudge", str(archive)]):
        with pytest.raises(SystemExit) as ended:
            main(command)
        codes.append(ended.value.code)
    live, again = [line for line in capsys.readouterr().out.splitlines() if " programs: " in line]
    assert live.startswith("6 programs: ") and again.startswith(live.split(" in ")[0])
    assert codes[0] == codes[1]  # the same verdicts, whatever they were
    archived = list(runs(archive))
    assert len(archived) == 6
    # every op of a completed run reported; a crashed run stops at the op it died in
    assert all(len(run.trace.results) == len(run.program.ops) or run.trace.ending.value != "completed"
               for run in archived)
