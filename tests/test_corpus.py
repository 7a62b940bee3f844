"""The seed corpus: every program parses, is canonical, and names the hmm-tests.c test it
transcribes, as listed in corpus/README.md."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness.prog import format_program, load_program

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
README = CORPUS / "README.md"
# Debian linux-source 7.2.13, unpacked; HMM_TESTS_C points elsewhere.
HMM_TESTS_C = Path(os.environ.get(
    "HMM_TESTS_C", "/tmp/src/linux-source-7.2/tools/testing/selftests/mm/hmm-tests.c"))

# corpus/pending/: transcribed programs the model does not check to their end yet
FILES = sorted(CORPUS.glob("*.txt")) + sorted((CORPUS / "pending").glob("*.txt"))
# `TEST_F(hmm, anon_read)`, `TEST_F(hmm2, snapshot)`, `TEST_F_TIMEOUT(hmm, name, 120)`
TEST_NAME = re.compile(r"TEST_F(?:_TIMEOUT)?\((\w+), (\w+)(?:, \d+)?\)")
FILE_ROW = re.compile(r"^\| `(hmm_tests_\w+\.txt)` \| `(TEST_F\(\w+, \w+\))` \|", re.M)


def readme_files() -> dict[str, str]:
    """File name -> the name of the hmm-tests.c test it transcribes, from the README."""
    rows = FILE_ROW.findall(README.read_text())
    assert rows, "corpus/README.md lists no files"
    return {name: TEST_NAME.fullmatch(test).group(2) for name, test in rows}


def readme_tests() -> set[str]:
    """Every hmm-tests.c test the README mentions (transcribed or not yet expressible)."""
    return {m.group(2) for m in TEST_NAME.finditer(README.read_text())}


def source_tests() -> set[str]:
    if not HMM_TESTS_C.is_file():
        pytest.skip(f"{HMM_TESTS_C} is not here (set HMM_TESTS_C)")
    text = HMM_TESTS_C.read_text()
    return {m.group(2) for m in re.finditer(r"^" + TEST_NAME.pattern, text, re.M)}


def test_there_is_a_corpus():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_file_parses_and_is_canonical(path):
    text = path.read_text()
    program = load_program(path)
    assert format_program(program) == text
    assert program.ops


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_file_names_its_hmm_test(path):
    listed = readme_files()
    assert path.name in listed, f"{path.name} is not listed in corpus/README.md"
    test = listed[path.name]
    assert path.stem == f"hmm_tests_{test}" or path.stem.startswith(f"hmm_tests_{test}_")
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# hmm-tests.c {test}"), first


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_file_restates_what_hmm_tests_asserts(path):
    program = load_program(path)
    assert any("hmm-tests:" in (located.comment or "") for located in program.located_ops)


def test_readme_lists_only_existing_files():
    missing = [name for name in readme_files()
               if not (CORPUS / name).is_file() and not (CORPUS / "pending" / name).is_file()]
    assert not missing


def test_transcribed_tests_exist_in_hmm_tests_c():
    tests = source_tests()
    unknown = {name: test for name, test in readme_files().items() if test not in tests}
    assert not unknown


def test_readme_accounts_for_every_hmm_test():
    tests = source_tests()
    assert readme_tests() == tests
