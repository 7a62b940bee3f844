"""What the model allows one op to report: an OpResult-shaped set of allowed values.

Scalar fields hold a tuple of allowed values (one value unless the model states a choice,
with its reason); `pages` and `snapshot` are exact within one Expect (an op with several
allowed outcomes returns several Expects, see check.py). `why` says, per field, why the
model allows only that, citing the kernel function; `page_why` does so per page.
"""

from __future__ import annotations

import errno as errno_codes
import signal
from dataclasses import dataclass, field

from harness.prog import Content, KsmScan, OpResult, Page, digest

SIGSEGV = int(signal.SIGSEGV)
SIGBUS_NUMBER = int(signal.SIGBUS)


@dataclass(frozen=True)
class Expect:
    errno: tuple[int, ...] = (0,)
    cpages: tuple[int | None, ...] = (None,)
    faults: tuple[int | None, ...] = (None,)
    pages: tuple[Page, ...] = ()
    snapshot: bytes | None = None
    pagemap: tuple | None = None     # pagemap.PageSpec per page, for a `pagemap` op
    # move_pages' status array: per page the statuses allowed (a node or -errno)
    node_status: tuple[tuple[int, ...], ...] | None = None
    smaps: tuple | None = None       # smaps.SmapsSpec per VMA, for a `smaps` op
    # per page of node_status, the folio whose node the model does not know yet (else
    # None): World.learn records the node the kernel reported
    node_folios: tuple[int | None, ...] = field(default=(), compare=False, hash=False)
    ksm: object | None = None        # ksm.KsmSpec, for a `ksm_merge` op
    why: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    page_why: tuple[str, ...] = field(default=(), compare=False, hash=False)

    def as_result(self) -> OpResult:
        """The first allowed outcome, as the runner would report it."""
        node_status = None if self.node_status is None else \
            tuple(allowed[0] for allowed in self.node_status)
        ksm = None if self.ksm is None else KsmScan(self.ksm.min_scans, self.ksm.pages_shared,
                                                    self.ksm.pages_sharing)
        smaps = None if self.smaps is None else tuple(spec.example() for spec in self.smaps)
        return OpResult(errno=self.errno[0], cpages=self.cpages[0], faults=self.faults[0],
                        pages=self.pages, snapshot=self.snapshot, node_status=node_status,
                        ksm=ksm, smaps=smaps)

    def __str__(self) -> str:
        return str(self.as_result())


NOT_COPIED = ("a failed ioctl reports nothing else: dmirror_fops_unlocked_ioctl returns "
              "before copy_to_user of the command")


def fail(err: int, why: str) -> Expect:
    """A failed ioctl or syscall: the driver does not copy the command back
    (dmirror_fops_unlocked_ioctl returns before copy_to_user), so no cpages/faults/pages."""
    return Expect(errno=(err,), why={"errno": why, "cpages": NOT_COPIED, "faults": NOT_COPIED,
                                     "pages": NOT_COPIED, "snapshot": NOT_COPIED})


NOT_DEVICE = "only dmirror ioctls report cpages and faults"


def done(why: str, **fields) -> Expect:
    return Expect(why={"errno": why, "cpages": NOT_DEVICE, "faults": NOT_DEVICE}, **fields)


def read_page(content: Content) -> Page:
    crc, first_word = digest(content)
    return Page(crc=crc, first_word=first_word)


@dataclass(frozen=True, eq=False)
class AnyBytes(Page):
    """A page read whose bytes nobody can know: a device read of a page the kernel freed
    (docs/findings.md #4). Equal to any page read without a signal; as a subclass its
    `__eq__` is asked first, whichever side of `==` it is on."""

    def __eq__(self, other) -> bool:
        return isinstance(other, Page) and not other.signal and \
            (isinstance(other, AnyBytes) or other.crc is not None)

    def __hash__(self) -> int:
        return hash(AnyBytes)

    def __str__(self) -> str:
        return "any bytes"


ANY_BYTES = AnyBytes()
WRITTEN = Page()
SEGV = Page(signal=SIGSEGV)
SIGBUS = Page(signal=SIGBUS_NUMBER)

EBUSY = errno_codes.EBUSY
EACCES = errno_codes.EACCES
ENODEV = errno_codes.ENODEV
EFAULT = errno_codes.EFAULT
EPERM = errno_codes.EPERM
EEXIST = errno_codes.EEXIST
ENOMEM = errno_codes.ENOMEM
EINVAL = errno_codes.EINVAL
ENOENT = errno_codes.ENOENT
EOPNOTSUPP = errno_codes.EOPNOTSUPP
