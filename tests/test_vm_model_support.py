"""Helpers for the VM tests of the model (tests/test_vm_model_*.py; named like them to sit
with them, it holds no tests itself): run a program on a real kernel and check the whole
trace against the reference model."""

from __future__ import annotations

import textwrap


from harness.prog import Ending, parse_program
from reference import check


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
