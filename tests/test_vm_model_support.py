"""Helpers for the VM tests of the model (tests/test_vm_model_*.py; named like them to sit
with them, it holds no tests itself): run a program on a real kernel and check the whole
trace against the reference model."""

from __future__ import annotations

import textwrap

import pytest

from harness.kernel import resolve_kernel
from harness.prog import Ending, parse_program
from harness.vm.session import KernelSession
from reference import check

KERNELS = ("7.2", "6.12", "6.1")


def kernel_fixture(name: str = "each_kernel"):
    """A module-scoped fixture booting each of KERNELS in turn."""

    @pytest.fixture(scope="module", params=KERNELS, name=name)
    def session(request, tmp_path_factory):
        kernel = resolve_kernel(request.param, log=print)
        with KernelSession(kernel, tmp_path_factory.mktemp(f"vm-{request.param}")) as booted:
            yield booted

    return session


def agrees(session, text: str, fully_modelled: bool = True):
    """Run the program on the kernel; every op must run and the model must accept every
    one (and, unless told otherwise, model every one). Returns (program, trace, verdict)."""
    program = parse_program(textwrap.dedent(text).strip() + "\n", "test")
    trace = session.run(program)
    assert trace.ending is Ending.COMPLETED, trace.console[-3000:]
    verdict = check(program, trace)
    assert verdict.ok, f"{trace.kernel_release}:\n{verdict}"
    if fully_modelled:
        assert verdict.unmodelled_from is None, verdict.unmodelled
        assert verdict.checked == len(program.ops)
    return program, trace, verdict
