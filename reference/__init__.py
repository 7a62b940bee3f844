"""The reference model: the allowed behaviour of the ops on 4 KiB anonymous pages.

    verdict = check(program, trace)
    verdict.ok, verdict.divergences, verdict.describe(i)
    verdict.unmodelled_from, verdict.unmodelled   # the first op the model does not model

The model holds the user-visible state (processes, VMAs, page table entries, folios, dmirror
mirror tables), computes for every op the set of outcomes the kernel may report, and compares
each observed field exactly (see check.py). Each rule names the kernel function it follows.
"""

from .check import Divergence, Simulation, Verdict, check, expected
from .expect import Expect
from .profile import Profile, profile_for
from .refuse import Unmodelled

__all__ = ["Divergence", "Expect", "Profile", "Simulation", "Unmodelled", "Verdict", "check", "expected",
           "profile_for"]
