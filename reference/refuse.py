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


def op_meets(world, op, places, meets) -> bool:
    """Does `op` reach a page `meets(world, mm, start, end)` finds: in the range it acts on,
    of the mm it acts on (none through an fd its process does not hold), or, for an op
    without a range (compact, ksm_merge), anywhere in a live mm (start and end None)."""
    page_range = getattr(op, "range", None)
    if page_range is None:
        return any(meets(world, mm, None, None) for mm in world.mms.values() if mm.alive)
    mm = world.acting_mm(op)
    if mm is None:
        return False
    start, end = places.vpns(page_range)
    return meets(world, mm, start, end)


def op_name(op) -> str:
    """How a refusal names an op: its keyword, and a madvise's advice with it."""
    advice = getattr(op, "advice", None)
    return op.keyword if advice is None else f"{op.keyword} {advice.value}"
