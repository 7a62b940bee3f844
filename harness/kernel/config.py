"""Kernel .config handling: the project's fragment and what a kernel must have to be usable."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# The project's config fragment, merged into `make tinyconfig`.
FRAGMENT = Path(__file__).with_name("hmm.config")
# Options for oracles the shared prebuilt kernels were built without. Own builds merge this
# second fragment after the first; a kernel without them is still used (they are not part
# of the reuse rule, so prebuilt kernels are not rebuilt for them), and the guest's boot
# check names each oracle that is off and why (OPTIONAL_ORACLES).
EXTRA_ORACLES = Path(__file__).with_name("extra_oracles.config")
# What own builds are configured with, in merge order.
BUILD_FRAGMENTS: tuple[Path, ...] = (FRAGMENT, EXTRA_ORACLES)

# oracle -> (the options it needs, where a kernel gets them), for the boot check's notes
OPTIONAL_ORACLES: dict[str, tuple[tuple[str, ...], str]] = {
    "the hard-lockup oracle": (
        ("CONFIG_HARDLOCKUP_DETECTOR", "CONFIG_HARDLOCKUP_DETECTOR_PREFER_BUDDY"),
        "own builds of 6.5 and later have them (hmmfuzz kernel build); before 6.5 there is "
        "only the perf detector, which cannot start under TCG"),
}


# Options without which a run is impossible (as opposed to the rest of the fragment, which
# adds oracles and MM features whose absence only narrows what a campaign can observe).
REQUIRED_OPTIONS: tuple[str, ...] = (
    # The device under test and the machinery it is built on.
    "CONFIG_TEST_HMM",
    "CONFIG_DEVICE_PRIVATE",
    "CONFIG_ZONE_DEVICE",
    "CONFIG_HMM_MIRROR",
    "CONFIG_MIGRATION",
    "CONFIG_MMU_NOTIFIER",
    # The op vocabulary: madvise(), THP collapse, swap-out, pagemap observations.
    "CONFIG_ADVISE_SYSCALLS",
    "CONFIG_TRANSPARENT_HUGEPAGE",
    "CONFIG_SWAP",
    "CONFIG_PROC_PAGE_MONITOR",
    # Booting the guest: a 64-bit kernel running the static runner (an ELF) as /init from
    # an initramfs, with devtmpfs for /dev/hmm_dmirror*, proc and sysfs.
    "CONFIG_64BIT",
    "CONFIG_BINFMT_ELF",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    # Talking to the guest: the runner's protocol over virtio-serial, the kernel console
    # (the crash oracle) on the serial port. tinyconfig turns printk off, which would leave
    # the console oracle blind.
    "CONFIG_VIRTIO_PCI",
    "CONFIG_VIRTIO_CONSOLE",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_PRINTK",
    # The guest reports its own config, which is how a user's bzImage gets checked.
    "CONFIG_IKCONFIG_PROC",
)

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_HEADER = re.compile(r"^# Linux/\S+ (\S+) Kernel Configuration$", re.MULTILINE)


def parse_config(text: str) -> dict[str, str]:
    """Map each option to its value; "# CONFIG_X is not set" maps to "n".

    Values are kept verbatim (strings keep their quotes) so that a fragment and a full
    .config compare byte for byte. A later line wins, as in Kconfig's own merge.
    """
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = "n"
    return options


def missing_options(config_text: str, fragment_text: str) -> list[str]:
    """Fragment options that config_text does not satisfy, in fragment order.

    A request for "n" is satisfied by absence: olddefconfig drops options whose
    dependencies are off, and an option that does not exist is off too.
    """
    config = parse_config(config_text)
    missing = []
    for option, wanted in parse_config(fragment_text).items():
        got = config.get(option, "n")
        if got != wanted:
            missing.append(option)
    return missing


def describe_missing(config_text: str, fragment_text: str) -> list[str]:
    """Like missing_options, but "CONFIG_X (wanted y, got n)" for log messages."""
    config = parse_config(config_text)
    fragment = parse_config(fragment_text)
    return [
        f"{option} (wanted {fragment[option]}, got {config.get(option, 'n')})"
        for option in missing_options(config_text, fragment_text)
    ]


# Bump when the build recipe changes in a way that changes the kernel (make arguments,
# config steps), so that cached builds made with the old recipe are not reused.
RECIPE_REVISION = "2"


def fragment_digest(fragment_text: str) -> str:
    """sha256 of the fragment (and the recipe revision): part of every cache key, so editing
    either forces a rebuild."""
    return hashlib.sha256(f"recipe {RECIPE_REVISION}\n{fragment_text}".encode()).hexdigest()


def fragments_text(fragments: tuple[Path, ...]) -> str:
    """The fragments as one, in merge order (a later line wins, as in merge_config.sh)."""
    return "".join(f.read_text() for f in fragments)


def config_version(config_text: str) -> str | None:
    """The kernel version a full .config was generated for ("# Linux/x86 6.12.117 ...")."""
    m = _HEADER.search(config_text)
    return m.group(1) if m else None
