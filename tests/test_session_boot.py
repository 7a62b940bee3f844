"""A guest that panics while booting: once under a loaded host is booted again (its console
kept); a kernel that panics at every boot is the user's failure, with the console."""

from __future__ import annotations

import pytest

from harness.kernel import KernelImage
from harness.runner.wire import Hello
from harness.vm import session as session_module
from harness.vm.qemu import MachineConfig, MachineError
from harness.vm.session import BOOT_ATTEMPTS, KernelSession

from conftest import REPO

PANIC = "Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug\n"
BOOT = (REPO / "tests/data/consoles/7.2/boot.log").read_text()


def guest_that_panics(times: int):
    boots: list[str] = []

    class Machine:
        def __init__(self, *args, **kwargs):
            self.text = ""

        def start(self) -> Hello:
            if len(boots) < times:
                boots.append("panic")
                self.text = PANIC
                raise MachineError("the VM did not boot (qemu exited with status 0)")
            boots.append("hello")
            self.text = BOOT
            return Hello("7.2.13", "x86_64", frozenset({0, 1}), b"")

        def console(self, since: int = 0) -> str:
            return self.text[since:]

    return Machine, boots


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setattr(session_module.build, "initramfs", lambda cache: tmp_path / "initramfs")
    monkeypatch.setattr(KernelSession, "_check_guest", lambda self, hello: None)
    logs: list[str] = []
    made = KernelSession(KernelImage(tmp_path / "bzImage", None, None, "test"), tmp_path,
                         MachineConfig(accel="tcg"), log=logs.append)
    (tmp_path / "vm").mkdir()
    return made, logs


def test_a_guest_that_panics_once_while_booting_is_booted_again(session, monkeypatch):
    made, logs = session
    machine, boots = guest_that_panics(times=1)
    monkeypatch.setattr(session_module, "Machine", machine)
    assert made.start().release == "7.2.13"
    assert boots == ["panic", "hello"]
    kept = list((made.workdir / "vm").glob("boot-panic-*.log"))
    assert len(kept) == 1 and "IO-APIC + timer" in kept[0].read_text()
    assert any("panicked while booting" in m for m in logs)


def test_a_kernel_that_panics_at_every_boot_fails_after_the_last_attempt(session, monkeypatch):
    made, _ = session
    machine, boots = guest_that_panics(times=BOOT_ATTEMPTS)
    monkeypatch.setattr(session_module, "Machine", machine)
    with pytest.raises(MachineError, match="did not boot"):
        made.start()
    assert boots == ["panic"] * BOOT_ATTEMPTS
