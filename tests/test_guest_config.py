"""A guest kernel is checked before any program runs: every option hmmfuzz cannot do
without is named when missing (exit status 4 from the CLI)."""

from __future__ import annotations

import gzip
import pytest

from harness.kernel import FRAGMENT, KernelImage
from harness.kernel.config import EXTRA_ORACLES
from harness.runner.wire import Hello
from harness.vm.session import KernelSession, MissingKernelOption

# The project's own fragment holds every required option: a config made of it passes.
FULL_CONFIG = FRAGMENT.read_text()


def session(tmp_path) -> KernelSession:
    return KernelSession(KernelImage(tmp_path / "bzImage", None, None, "test"), tmp_path,
                         log=lambda message: None)


def hello(config_text: str, devices=frozenset({0, 1})) -> Hello:
    return Hello("7.2.13", "x86_64", devices, gzip.compress(config_text.encode()))


def test_a_guest_without_the_test_device_option_is_refused_by_name(tmp_path):
    config = FULL_CONFIG.replace("CONFIG_TEST_HMM=y", "# CONFIG_TEST_HMM is not set")
    with pytest.raises(MissingKernelOption, match="CONFIG_TEST_HMM"):
        session(tmp_path)._check_guest(hello(config))


def test_a_guest_without_proc_config_is_told_which_options_expose_it(tmp_path):
    with pytest.raises(MissingKernelOption, match="CONFIG_IKCONFIG_PROC"):
        session(tmp_path)._check_guest(Hello("7.2.13", "x86_64", frozenset({0, 1}), b""))


def test_missing_device_nodes_name_the_options_that_create_them(tmp_path):
    with pytest.raises(MissingKernelOption, match="CONFIG_TEST_HMM, CONFIG_DEVICE_PRIVATE"):
        session(tmp_path)._check_guest(hello(FULL_CONFIG, devices=frozenset()))


def test_a_config_with_every_fragment_option_passes(tmp_path):
    session(tmp_path)._check_guest(hello(FULL_CONFIG))


def logged_check(tmp_path, config_text: str) -> list[str]:
    logs: list[str] = []
    checked = session(tmp_path)
    checked.log = logs.append
    checked._check_guest(hello(config_text))
    return logs


def test_a_kernel_without_the_buddy_detector_runs_with_the_hard_lockup_oracle_named_off(tmp_path):
    # The shared prebuilt kernels are such kernels (hmm.config alone): fine to run, but the
    # user is told.
    notes = [m for m in logged_check(tmp_path, FULL_CONFIG) if "hard-lockup" in m]
    assert len(notes) == 1 and "CONFIG_HARDLOCKUP_DETECTOR" in notes[0], notes


def test_an_own_build_has_the_hard_lockup_oracle_on(tmp_path):
    own = FULL_CONFIG + EXTRA_ORACLES.read_text()
    assert not [m for m in logged_check(tmp_path, own) if "hard-lockup" in m]


def test_the_oracle_that_is_off_is_named_once_per_session_not_at_every_reboot(tmp_path):
    logs: list[str] = []
    checked = session(tmp_path)
    checked.log = logs.append
    for _ in range(3):  # three boots of one session (a crash restarts the guest)
        checked._check_guest(hello(FULL_CONFIG))
    assert len([m for m in logs if "hard-lockup" in m]) == 1
