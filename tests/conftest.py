"""Shared fixtures. Tests that boot the real kernel are marked `vm`; they are never skipped:
a machine that cannot boot the guest fails them, and ./setup.sh installs what they need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
TEST_KERNEL = os.environ.get("HMMFUZZ_TEST_KERNEL", "7.2")

# Prebuilt test kernels beside the repository (CI and the project's machines have them);
# resolve_kernel() still checks each one's .config against the project's fragment and
# builds instead when it does not match.
_SHARED_KERNELS = REPO.parent / "shared" / "kernels"
if "HMMFUZZ_PREBUILT_KERNELS" not in os.environ and _SHARED_KERNELS.is_dir():
    os.environ["HMMFUZZ_PREBUILT_KERNELS"] = str(_SHARED_KERNELS)


@pytest.fixture(scope="session")
def test_kernel():
    from harness.kernel import resolve_kernel

    return resolve_kernel(TEST_KERNEL, log=lambda message: print(f"kernel: {message}"))


@pytest.fixture(scope="session")
def kernel_session(test_kernel, tmp_path_factory):
    """One guest for the whole test session (a boot costs seconds under TCG)."""
    from harness.vm.session import KernelSession

    session = KernelSession(test_kernel, tmp_path_factory.mktemp("vm"))
    session.start()
    yield session
    session.close()


KERNELS = ("7.2", "6.12", "6.1")


def kernel_fixture(name: str = "each_kernel"):
    """A module-scoped fixture, named `name`, booting each of KERNELS in turn (one guest per
    kernel for the whole module: a boot costs seconds under TCG)."""

    @pytest.fixture(scope="module", params=KERNELS, name=name)
    def session(request, tmp_path_factory):
        from harness.kernel import resolve_kernel
        from harness.vm.session import KernelSession

        kernel = resolve_kernel(request.param, log=print)
        with KernelSession(kernel, tmp_path_factory.mktemp(f"vm-{request.param}")) as booted:
            yield booted

    return session
