"""`hmmfuzz run` exit statuses and messages for bad input and broken infrastructure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HMMFUZZ = [sys.executable, "-m", "fuzz.cli"]
REPO = Path(__file__).resolve().parent.parent


def hmmfuzz(*args, cwd=REPO):
    return subprocess.run([*HMMFUZZ, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_program_that_does_not_parse_is_an_input_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("region a pages=4\np0 map a[0:4]\np0 dev_read d0 a[0:4]\n")
    result = hmmfuzz("run", str(bad), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert f"{bad}:3: fd 'd0' is not open in p0" in result.stderr


def test_an_unknown_kernel_is_a_usage_error(tmp_path):
    program = tmp_path / "ok.txt"
    program.write_text("region a pages=1\np0 map a[0:1]\n")
    result = hmmfuzz("run", str(program), "--kernel", "5.99")
    assert result.returncode == 2
    assert "neither a version" in result.stderr


def test_a_file_that_is_not_a_bzimage_is_an_infrastructure_failure(tmp_path):
    program = tmp_path / "ok.txt"
    program.write_text("region a pages=1\np0 map a[0:1]\n")
    not_a_kernel = tmp_path / "bzImage"
    not_a_kernel.write_bytes(b"\0" * 4096)
    result = hmmfuzz("run", str(program), "--bzimage", str(not_a_kernel), "--accel", "tcg",
                     "--workdir", str(tmp_path / "work"))
    assert result.returncode == 4, result.stderr
    assert "infrastructure failure" in result.stderr and "not an x86 bzImage" in result.stderr


@pytest.mark.vm
def test_a_guest_that_does_not_boot_is_reported_with_its_console(test_kernel, tmp_path):
    from harness.vm.qemu import MachineConfig, MachineError
    from harness.vm.session import KernelSession

    # No /init to run: the kernel panics at boot ("No working init found").
    session = KernelSession(test_kernel, tmp_path, MachineConfig(accel="tcg", append="rdinit=/nope"))
    with pytest.raises(MachineError) as error:
        session.start()
    assert "did not boot" in str(error.value)
    assert "Kernel panic" in str(error.value)
