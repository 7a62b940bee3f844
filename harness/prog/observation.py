"""What the kernel side reports: one OpResult per op that ran, and how the program ended."""

from __future__ import annotations

import errno as errno_names
import signal as signal_names
from dataclasses import dataclass, field
from enum import Enum

from .content import describe


@dataclass(frozen=True)
class Page:
    """One page of a CPU access or a device transfer.

    `signal` is the signal a CPU access raised (0: none). `crc`/`first_word` describe the
    bytes read (None for writes and for pages that faulted).
    """

    signal: int = 0
    crc: int | None = None
    first_word: int | None = None

    def __str__(self) -> str:
        if self.signal:
            return signal_names.Signals(self.signal).name
        if self.crc is None:
            return "ok"
        return describe(self.crc, self.first_word)


@dataclass(frozen=True)
class OpResult:
    """The observations of one op.

    errno 0 means success. `cpages`/`faults` are the dmirror command's outputs; the driver
    copies them back only when the ioctl succeeds, so they are None otherwise and for
    non-device ops. `pages` holds per-page outcomes for read/write (one per page, a fault
    does not stop the op) and for a successful dev_read/exclusive (the bytes the device
    returned); a failed ioctl reports only its errno. `snapshot` holds SNAPSHOT's bytes.
    """

    errno: int = 0
    cpages: int | None = None
    faults: int | None = None
    pages: tuple[Page, ...] = ()
    snapshot: bytes | None = None


class Ending(Enum):
    COMPLETED = "completed"   # every op ran
    CRASHED = "crashed"       # the kernel oopsed/panicked or the VM died mid-program
    HUNG = "hung"             # an op did not finish within the timeout
    DIED = "died"             # the process running an op was killed (not a caught fault)


@dataclass(frozen=True)
class Trace:
    """Everything one run of a program on a kernel produced."""

    kernel_release: str
    results: tuple[OpResult, ...]
    ending: Ending = Ending.COMPLETED
    console: str = field(default="", repr=False)


def errno_name(number: int) -> str:
    if number == 0:
        return "0"
    return errno_names.errorcode.get(number, str(number))
