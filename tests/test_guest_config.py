"""A guest kernel is checked before any program runs: every option hmmfuzz cannot do
without is named when missing (exit status 4 from the CLI)."""

from __future__ import annotations

import gzip
import pytest

from harness.kernel import FRAGMENT, KernelImage
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
