"""Page contents the runner and the model agree on without shipping bytes.

A CPU or device write of `seed` to the page at virtual page number `vpn` stores 512 little-
endian 64-bit words, word i = (seed << 48) | (vpn << 9) | i. The runner computes the same
pattern (harness/runner/runner.c, `fill_pattern`) and reports what it reads back as a CRC-32
(zlib's) and the page's first word, which names the seed and page a person is looking at.
"""

from __future__ import annotations

import zlib
from array import array
from dataclasses import dataclass
from functools import lru_cache

from .ops import PAGE_SIZE

WORDS_PER_PAGE = PAGE_SIZE // 8
VPN_BITS = 39


@dataclass(frozen=True, order=True)
class Content:
    """What a page holds: zero-filled (seed 0) or the pattern of `seed` written at `vpn`."""

    seed: int = 0
    vpn: int = 0

    @property
    def is_zero(self) -> bool:
        return self.seed == 0

    def __str__(self) -> str:
        return "zero" if self.is_zero else f"pattern(seed={self.seed}, vpn={self.vpn:#x})"


ZERO = Content()


def pattern_base(seed: int, vpn: int) -> int:
    return (seed << 48) | ((vpn & ((1 << VPN_BITS) - 1)) << 9)


def page_bytes(content: Content) -> bytes:
    if content.is_zero:
        return bytes(PAGE_SIZE)
    base = pattern_base(content.seed, content.vpn)
    return array("Q", range(base, base + WORDS_PER_PAGE)).tobytes()


@lru_cache(maxsize=65536)
def digest(content: Content) -> tuple[int, int]:
    """(crc32, first word) of the page, exactly as the runner reports them."""
    data = page_bytes(content)
    return zlib.crc32(data), int.from_bytes(data[:8], "little")


def recognise(crc: int, first_word: int) -> Content | None:
    """The content whose digest this is (zero, or the pattern its first word names), or None."""
    if first_word == 0:
        return ZERO if (crc, first_word) == digest(ZERO) else None
    guess = Content(seed=first_word >> 48, vpn=(first_word >> 9) & ((1 << VPN_BITS) - 1))
    return guess if guess.seed and digest(guess) == (crc, first_word) else None


def describe(crc: int, first_word: int) -> str:
    """Name observed bytes for a person: which pattern they match, or that they match none."""
    content = recognise(crc, first_word)
    if content is not None:
        return str(content)
    return f"unknown bytes (crc32={crc:#010x}, first word={first_word:#018x})"
