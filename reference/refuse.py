"""Honest refusal: an op (or a case of an op) the model does not model.

Raised by a step; check() then records the op as `Verdict.unmodelled_from` and checks
nothing from there on, because the state after it is unknown.
"""

from __future__ import annotations


class Unmodelled(Exception):
    def __init__(self, what: str, why: str = ""):
        super().__init__(f"{what} is not modelled" + (f" ({why})" if why else ""))
        self.what = what   # e.g. "madvise pageout", "map shared"
        self.why = why


def op_name(op) -> str:
    """How a refusal names an op: its keyword, and a madvise's advice with it."""
    advice = getattr(op, "advice", None)
    return op.keyword if advice is None else f"{op.keyword} {advice.value}"
