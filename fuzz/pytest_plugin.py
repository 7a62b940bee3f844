"""pytest plugin: replay corpus files as test items on a real kernel.

    pytest corpus/ --hmmfuzz-kernel 7.2              # every corpus/*.txt is a test
    pytest corpus/ --hmmfuzz-kernel 6.1,6.12,7.2     # one test per file and kernel

A program passes when every op agrees with the model, or, for a regression program, when
it diverges exactly as its `# hmmfuzz-expect: <series> <signature>` line says.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("hmmfuzz")
    group.addoption("--hmmfuzz-kernel", default=None,
                    help="Replay collected *.txt programs on these kernels (comma-separated "
                         "versions or bzImage paths).")
    group.addoption("--hmmfuzz-accel", default="auto", help="QEMU accelerator for replay.")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots the real kernel in QEMU")


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".txt" and parent.config.getoption("hmmfuzz_kernel"):
        return ProgramFile.from_parent(parent, path=file_path)
    return None


class ProgramFile(pytest.File):
    def collect(self):
        for kernel in self.config.getoption("hmmfuzz_kernel").split(","):
            yield ProgramItem.from_parent(self, name=f"{self.path.stem}[{kernel}]", kernel=kernel)


class ProgramItem(pytest.Item):
    def __init__(self, *, kernel: str, **kwargs):
        super().__init__(**kwargs)
        self.kernel = kernel
        self.add_marker(pytest.mark.vm)

    def runtest(self):
        from .replay import replay

        self.replayed = replay(_session(self.config, self.kernel), self.path)
        if not self.replayed.passed:
            raise ReplayFailure(self.replayed.explain())

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ReplayFailure):
            return f"{self.path} on {self.kernel}:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"replay {self.path.name} on {self.kernel}"


class ReplayFailure(Exception):
    pass


_SESSIONS = pytest.StashKey[dict]()


def _session(config, kernel: str):
    """One booted guest per kernel for the whole pytest session."""
    from harness.kernel import VERSIONS, resolve_kernel
    from harness.vm.qemu import MachineConfig
    from harness.vm.session import KernelSession

    sessions = config.stash.setdefault(_SESSIONS, {})
    if kernel not in sessions:
        image = resolve_kernel(kernel) if kernel in VERSIONS else resolve_kernel(bzimage=Path(kernel))
        workdir = Path(config.cache.mkdir("hmmfuzz-replay")) / kernel.replace("/", "_")
        session = KernelSession(image, workdir, MachineConfig(accel=config.getoption("hmmfuzz_accel")))
        session.start()
        sessions[kernel] = session
    return sessions[kernel]


def pytest_sessionfinish(session):
    for kernel_session in session.config.stash.get(_SESSIONS, {}).values():
        kernel_session.close()
