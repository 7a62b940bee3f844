"""The vocabulary shared by the kernel side, the reference model and the fuzzing front end:
programs and their ops, their text form, page contents, and observations."""

from .content import ZERO, Content, describe, digest
from .observation import (
    LEAK_THRESHOLD_PAGES, NOISE_PAGES, Ending, KsmScan, MemoryCheck, MemoryCounters, OpResult, Page, SmapsVma,
    Trace, errno_name,
)
from .ops import *  # noqa: F401,F403  (the op classes are the vocabulary)
from .ops import OP_KINDS, PAGE_SIZE, PageRange, Program, Prot, Region
from .text import ParseError, format_op, format_program, load_program, parse_program
