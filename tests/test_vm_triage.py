"""From a finding to CI: triage says which kernels reproduce it and writes a regression
program whose expectations replay then holds the kernel to."""

from __future__ import annotations

import pytest

from fuzz.cli import main

from conftest import CORPUS

pytestmark = pytest.mark.vm
OOPS = CORPUS / "regressions" / "test_hmm_dmirror_do_read_oops.txt"


def cli(*args) -> int:
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    return ended.value.code


def test_triage_writes_a_regression_program_that_replay_then_passes(tmp_path, capsys):
    program = tmp_path / "finding.txt"
    program.write_text("\n".join(line for line in OOPS.read_text().splitlines()
                                 if not line.startswith("# hmmfuzz-expect")) + "\n")
    regression = tmp_path / "regression.txt"
    assert cli("triage", str(program), "--kernels", "7.2,6.12", "--runs", "1",
               "--regression", str(regression), "--workdir", str(tmp_path / "w")) == 1
    out = capsys.readouterr().out
    assert "| 7.2 | 7.2.13 | 1/1 | crash: BUG: unable to handle page fault in dmirror_do_read |" in out
    text = regression.read_text()
    assert "# hmmfuzz-expect: 7.2 crash: BUG: unable to handle page fault in dmirror_do_read" in text
    assert "# hmmfuzz-expect: 6.12 crash: BUG: unable to handle page fault in dmirror_do_read" in text
    assert cli("replay", str(regression), "--kernel", "7.2", "--workdir", str(tmp_path / "w")) == 0
