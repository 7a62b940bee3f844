"""harness.kernel: config parsing, the fragment check, and which kernel gets chosen.

Fast: no network, no build (the build step is replaced).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.kernel import (
    FRAGMENT,
    REQUIRED_OPTIONS,
    KernelError,
    KernelImage,
    missing_options,
    parse_config,
    resolve_kernel,
)
from harness.kernel.build import check_config, tree_version
from harness.kernel.debian import debian_mirror, package_version
from harness.kernel.config import BUILD_FRAGMENTS
from harness.kernel.resolve import _install, _fragment_key

SHARED_KERNELS = Path("/work/shared/kernels")
FRAGMENT_TEXT = FRAGMENT.read_text()


def full_config(fragment_text: str = FRAGMENT_TEXT, version: str = "6.12.117") -> str:
    """A .config that satisfies the fragment, as olddefconfig would write it."""
    lines = [f"# Linux/x86 {version} Kernel Configuration", "CONFIG_CC_VERSION_TEXT=\"gcc\""]
    for option, value in parse_config(fragment_text).items():
        lines.append(f"# {option} is not set" if value == "n" else f"{option}={value}")
    return "\n".join(lines) + "\n"


# --- parse_config -------------------------------------------------------------------------

def test_parse_config_values_and_unset():
    text = """
# Linux/x86 7.2.13 Kernel Configuration
CONFIG_A=y
CONFIG_B=m
CONFIG_NR_CPUS=8
CONFIG_CMDLINE="console=ttyS0 panic=-1"
# CONFIG_C is not set
# a comment that mentions CONFIG_D=y
not a config line
"""
    assert parse_config(text) == {
        "CONFIG_A": "y",
        "CONFIG_B": "m",
        "CONFIG_NR_CPUS": "8",
        "CONFIG_CMDLINE": '"console=ttyS0 panic=-1"',
        "CONFIG_C": "n",
    }


def test_parse_config_later_line_wins():
    assert parse_config("CONFIG_A=y\n# CONFIG_A is not set\n") == {"CONFIG_A": "n"}
    assert parse_config("# CONFIG_A is not set\nCONFIG_A=y\n") == {"CONFIG_A": "y"}


def test_fragment_parses_and_holds_the_required_options():
    fragment = parse_config(FRAGMENT_TEXT)
    assert len(fragment) > 50
    for option in REQUIRED_OPTIONS:
        assert fragment.get(option) == "y", option


# --- missing_options ----------------------------------------------------------------------

FRAG = "CONFIG_A=y\nCONFIG_NR=8\nCONFIG_S=\"x\"\n# CONFIG_OFF is not set\nCONFIG_OFF2=n\n"


def test_complete_config_misses_nothing():
    config = "CONFIG_A=y\nCONFIG_NR=8\nCONFIG_S=\"x\"\nCONFIG_EXTRA=y\n"
    assert missing_options(config, FRAG) == []


def test_option_set_to_n_is_missing():
    config = "# CONFIG_A is not set\nCONFIG_NR=8\nCONFIG_S=\"x\"\n"
    assert missing_options(config, FRAG) == ["CONFIG_A"]


def test_absent_option_is_missing():
    assert missing_options("CONFIG_NR=8\n", FRAG) == ["CONFIG_A", "CONFIG_S"]


def test_different_value_is_missing():
    config = "CONFIG_A=m\nCONFIG_NR=64\nCONFIG_S=\"y\"\n"
    assert missing_options(config, FRAG) == ["CONFIG_A", "CONFIG_NR", "CONFIG_S"]


def test_off_requests_are_satisfied_by_absence_or_n():
    assert missing_options("CONFIG_A=y\nCONFIG_NR=8\nCONFIG_S=\"x\"\n"
                           "# CONFIG_OFF is not set\n", FRAG) == []
    assert missing_options("CONFIG_A=y\nCONFIG_NR=8\nCONFIG_S=\"x\"\nCONFIG_OFF=y\n",
                           FRAG) == ["CONFIG_OFF"]


def test_crafted_full_config_satisfies_fragment_until_one_option_is_dropped():
    config = full_config()
    assert missing_options(config, FRAGMENT_TEXT) == []
    dropped = config.replace("CONFIG_KCOV=y\n", "# CONFIG_KCOV is not set\n")
    assert missing_options(dropped, FRAGMENT_TEXT) == ["CONFIG_KCOV"]


@pytest.mark.skipif(not SHARED_KERNELS.is_dir(), reason="no shared prebuilt kernels here")
@pytest.mark.parametrize("version", ["6.1", "6.12", "7.2"])
def test_shared_prebuilt_configs_satisfy_the_fragment(version):
    config = SHARED_KERNELS / version / ".config"
    if not config.is_file():
        pytest.skip(f"no {config}")
    assert missing_options(config.read_text(), FRAGMENT_TEXT) == []


# --- what happens when olddefconfig drops options -----------------------------------------

def test_check_config_logs_dropped_options_and_accepts_optional_ones():
    logs: list[str] = []
    check_config(full_config().replace("CONFIG_KCOV=y\n", ""), FRAGMENT_TEXT, logs.append)
    assert len(logs) == 1 and "CONFIG_KCOV (wanted y, got n)" in logs[0]


def test_check_config_refuses_a_kernel_without_required_options():
    config = full_config().replace("CONFIG_TEST_HMM=y\n", "").replace("CONFIG_PRINTK=y\n", "")
    with pytest.raises(KernelError, match="CONFIG_TEST_HMM, CONFIG_PRINTK|"
                                          "CONFIG_PRINTK, CONFIG_TEST_HMM"):
        check_config(config, FRAGMENT_TEXT, lambda _: None)


# --- choosing a kernel --------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_prebuilt_from_environment(monkeypatch):
    # CI sets HMMFUZZ_PREBUILT_KERNELS; each test here states its own prebuilt directory.
    monkeypatch.delenv("HMMFUZZ_PREBUILT_KERNELS", raising=False)


class FakeBuilder:
    """Stands in for the Debian build: records the call, returns a made-up image."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, version: str, cache_dir: Path, log) -> KernelImage:
        self.calls.append(version)
        return KernelImage(cache_dir / "fake-bzImage", None, version, "built")


def make_prebuilt(root: Path, version: str, config_text: str) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "bzImage").write_bytes(b"not really a kernel")
    (d / ".config").write_text(config_text)
    return d


def test_prebuilt_with_complete_config_is_chosen(tmp_path):
    d = make_prebuilt(tmp_path / "prebuilt", "6.12", full_config(version="6.12.117"))
    build = FakeBuilder()
    image = resolve_kernel("6.12", prebuilt_dir=tmp_path / "prebuilt",
                           cache_dir=tmp_path / "cache", builder=build, log=lambda _: None)
    assert image == KernelImage(d / "bzImage", d / ".config", "6.12.117", "prebuilt")
    assert build.calls == []


def test_prebuilt_is_found_through_the_environment(tmp_path, monkeypatch):
    make_prebuilt(tmp_path / "prebuilt", "7.2", full_config(version="7.2.13"))
    monkeypatch.setenv("HMMFUZZ_PREBUILT_KERNELS", str(tmp_path / "prebuilt"))
    image = resolve_kernel(cache_dir=tmp_path / "cache", builder=FakeBuilder(),
                           log=lambda _: None)
    assert (image.origin, image.version) == ("prebuilt", "7.2.13")


def test_prebuilt_with_incomplete_config_is_not_chosen(tmp_path):
    config = full_config().replace("CONFIG_KCOV=y\n", "# CONFIG_KCOV is not set\n")
    make_prebuilt(tmp_path / "prebuilt", "6.12", config)
    build, logs = FakeBuilder(), []
    image = resolve_kernel("6.12", prebuilt_dir=tmp_path / "prebuilt",
                           cache_dir=tmp_path / "cache", builder=build, log=logs.append)
    assert image.origin == "built" and build.calls == ["6.12"]
    assert any("not used" in m and "CONFIG_KCOV" in m for m in logs)


def test_prebuilt_of_another_version_is_not_chosen(tmp_path):
    make_prebuilt(tmp_path / "prebuilt", "6.12", full_config())
    build = FakeBuilder()
    resolve_kernel("6.1", prebuilt_dir=tmp_path / "prebuilt", cache_dir=tmp_path / "cache",
                   builder=build, log=lambda _: None)
    assert build.calls == ["6.1"]


def test_prebuilt_whose_config_is_for_another_version_is_not_chosen(tmp_path):
    make_prebuilt(tmp_path / "prebuilt", "6.1", full_config(version="6.12.117"))
    build, logs = FakeBuilder(), []
    resolve_kernel("6.1", prebuilt_dir=tmp_path / "prebuilt", cache_dir=tmp_path / "cache",
                   builder=build, log=logs.append)
    assert build.calls == ["6.1"] and any("6.12.117" in m for m in logs)


def test_cached_build_is_reused_and_newest_patch_level_wins(tmp_path):
    cache = tmp_path / "cache"
    key = _fragment_key(BUILD_FRAGMENTS)
    for version in ("6.12.9", "6.12.117", "6.1.200"):
        dest = cache / "kernels" / f"{version}-{key}"
        dest.mkdir(parents=True)
        (tmp_path / "bz").write_bytes(b"x")
        (tmp_path / "cfg").write_text("CONFIG_A=y\n")
        _install(tmp_path / "bz", tmp_path / "cfg", dest)
    # A build made with another fragment is never reused.
    (cache / "kernels" / "6.12.999-000000000000").mkdir()
    (cache / "kernels" / "6.12.999-000000000000" / "bzImage").write_bytes(b"x")
    build = FakeBuilder()
    image = resolve_kernel("6.12", cache_dir=cache, builder=build, log=lambda _: None)
    assert (image.origin, image.version, build.calls) == ("cache", "6.12.117", [])
    assert image.bzimage == cache / "kernels" / f"6.12.117-{key}" / "bzImage"


def test_incomplete_cache_entry_is_ignored(tmp_path):
    cache = tmp_path / "cache"
    (cache / "kernels" / f"6.12.117-{_fragment_key(BUILD_FRAGMENTS)}").mkdir(parents=True)
    build = FakeBuilder()
    resolve_kernel("6.12", cache_dir=cache, builder=build, log=lambda _: None)
    assert build.calls == ["6.12"]


def test_user_bzimage_is_used_as_is(tmp_path):
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 16)
    assert resolve_kernel(bzimage=bz) == KernelImage(bz, None, None, "user-bzimage")


def test_vmlinux_instead_of_bzimage_is_refused(tmp_path):
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF" + b"\0" * 1024)
    with pytest.raises(KernelError, match="not an x86 bzImage"):
        resolve_kernel(bzimage=vmlinux)


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(KernelError, match="not both"):
        resolve_kernel(source=tmp_path, bzimage=tmp_path / "bzImage")
    with pytest.raises(KernelError, match="series"):
        resolve_kernel("6.12.117", cache_dir=tmp_path, builder=FakeBuilder())


def test_configured_user_tree_is_refused_before_building(tmp_path):
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\n"
                                   "EXTRAVERSION = -rc1\n")
    (tree / ".config").write_text("CONFIG_A=y\n")
    assert tree_version(tree) == "6.13.0-rc1"
    with pytest.raises(KernelError, match="mrproper"):
        resolve_kernel(source=tree, cache_dir=tmp_path / "cache", log=lambda _: None)


# --- Debian details -----------------------------------------------------------------------

def test_debian_mirror_is_read_from_the_first_non_security_stanza(tmp_path):
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert debian_mirror(sources) == "http://mirror.example/debian"
    assert debian_mirror(tmp_path / "absent") == "http://deb.debian.org/debian"


def test_package_version_from_deb_name():
    deb = Path("linux-source-6.12_6.12.117-1~deb12u1_all.deb")
    assert package_version(deb) == "6.12.117-1~deb12u1"


def test_missing_host_tools_are_named_with_their_packages(tmp_path, monkeypatch):
    from harness.kernel import hosttools

    real_which = hosttools.shutil.which
    monkeypatch.setattr(hosttools.shutil, "which",
                        lambda tool: None if tool in ("flex", "xz") else real_which(tool) or tool)
    monkeypatch.setattr(hosttools, "INCLUDE_DIRS", (tmp_path,))
    monkeypatch.setattr(hosttools.platform, "machine", lambda: "x86_64")
    with pytest.raises(KernelError) as err:
        hosttools.check_host_tools(fetch=True)
    message = str(err.value)
    assert "flex" in message and "libelf.h" in message and "openssl/ssl.h" in message
    assert "apt-get install flex libelf-dev libssl-dev xz-utils" in message
    with pytest.raises(KernelError) as err:
        hosttools.check_host_tools(fetch=False)
    assert "xz" not in str(err.value)
