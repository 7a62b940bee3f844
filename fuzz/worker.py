"""One campaign worker: libFuzzer (through Atheris) drives programs into one VM.

Run by `hmmfuzz fuzz` as `python -m fuzz.worker CONFIG.json`. The model is imported under
Atheris instrumentation, so libFuzzer's coverage is the model's coverage: inputs that make
the model take new paths (new entry kinds, fault paths, invalidations) join the corpus.
A finding is recorded and fuzzing goes on; a new signature is first reproduced on a fresh
VM, and its reproduction rate is recorded with it.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["reference"]):
    import reference  # noqa: F401  (instrumented before anything else imports it)

import json
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from harness.kernel import KernelImage
from harness.prog import Program, format_program
from harness.vm.qemu import MachineConfig, MachineError
from harness.vm.session import KernelSession

from .feedback import features, slot
from .findings import FindingStore
from .judge import Status, judge
from .minimize import signature
from .mutate import Chooser, decode, encode, generate, mutate

REPRODUCTION_RUNS = 3
# Coverage counters for what the kernel reported (fuzz/feedback.py); features hash into them
FEEDBACK_SLOTS = 1 << 14


@dataclass
class WorkerConfig:
    index: int
    bzimage: str
    workdir: str
    corpus: str
    seeds: list[str]
    seconds: int
    accel: str
    guided: bool = True  # False: fresh random programs, same VM, judging and confirmation

    @classmethod
    def load(cls, path: str) -> "WorkerConfig":
        return cls(**json.loads(Path(path).read_text()))


class Worker:
    def __init__(self, config: WorkerConfig):
        self.config = config
        root = Path(config.workdir)
        kernel = KernelImage(Path(config.bzimage), None, None, "campaign")
        self.session = KernelSession(kernel, root / "vms" / f"worker{config.index}",
                                     MachineConfig(accel=config.accel), log=self.log)
        self.store = FindingStore(root / "findings")
        self.stats_path = root / "workers" / f"{config.index}.json"
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        self.stats = {"execs": 0, "findings": 0, "restarts": 0, "started": time.time(),
                      "features": 0}
        self.last_write = 0.0
        self.seen_features: set[int] = set()
        self.counters: list[int] = []

    def log(self, message: str):
        print(f"worker {self.config.index}: {message}", file=sys.stderr, flush=True)

    def run(self, program: Program):
        verdict = judge(program, self.session.run(program), self.session.last_info.died_signal)
        self.stats["execs"] += 1
        return verdict

    def reserve_feedback(self):
        """Counters for kernel-reported features; libFuzzer must know them before it starts."""
        self.counters = [atheris._reserve_counter() for _ in range(FEEDBACK_SLOTS)]
        atheris.UpdateCounterArrays()

    def signal(self, verdict):
        """Tell libFuzzer which kernel-reported features this run showed."""
        for feature in features(verdict.program, verdict.trace):
            index = slot(feature, FEEDBACK_SLOTS)
            self.seen_features.add(index)
            atheris._trace_branch(self.counters[index])
        self.stats["features"] = len(self.seen_features)

    def test_one_input(self, data: bytes):
        self.test_program(decode(data, atheris.FuzzedDataProvider))

    def test_program(self, program: Program):
        try:
            verdict = self.run(program)
        except MachineError as error:  # the VM would not come back: report and go on
            self.log(f"VM restart failed: {error}")
            return
        except Exception:  # noqa: BLE001 - a harness bug must not end the campaign
            self.keep_error(program)
            return
        if self.counters:
            self.signal(verdict)
        if verdict.status is not Status.OK:
            self.found(verdict)
        self.write_stats()

    def run_unguided(self):
        """The baseline a campaign is measured against: fresh programs from the same
        generator, judged and confirmed exactly as the guided worker does."""
        chooser = Chooser(random.Random(self.config.index + 1))
        started = time.monotonic()
        while time.monotonic() - started < self.config.seconds:
            hello = self.session.hello   # the booted kernel's model guides the generator
            self.test_program(generate(chooser, kernel_release=hello.release if hello else "7.2.0"))

    def keep_error(self, program: Program):
        """Save the program that made the harness itself fail, with the traceback."""
        directory = Path(self.config.workdir) / "harness-errors"
        directory.mkdir(exist_ok=True)
        name = f"{int(time.time() * 1000)}-w{self.config.index}"
        (directory / f"{name}.txt").write_text(format_program(program))
        (directory / f"{name}.traceback").write_text(traceback.format_exc())
        self.log(f"harness error, program kept in {directory / name}.txt:\n{traceback.format_exc()}")
        self.session.close()  # start from a fresh VM: the state may be unknown

    def found(self, verdict):
        """Record the failure before anything else (the program and console are on disk
        even if the campaign stops now), then reproduce a new one on a fresh VM."""
        recorded = self.store.record(verdict, pending=True)
        if not recorded.new:
            return
        self.stats["findings"] += 1
        self.stats["reproducing"] = True   # the campaign lets this finish at its deadline
        self.write_stats(force=True)
        reproduction = self.reproduce(verdict.program, recorded.signature)
        self.store.confirm(recorded.signature, reproduction)
        self.stats["reproducing"] = False
        self.write_stats(force=True)
        self.log(f"new finding ({reproduction['reproduced']}/{reproduction['runs']} "
                 f"on a fresh VM): {recorded.signature}")

    def reproduce(self, program: Program, wanted: str) -> dict:
        """Rerun on a fresh VM: a finding counts only if it comes back there."""
        self.session.close()
        reproduced = sum(signature(self.run(program)) == wanted for _ in range(REPRODUCTION_RUNS))
        return {"runs": REPRODUCTION_RUNS, "reproduced": reproduced}

    def write_stats(self, force: bool = False):
        now = time.time()
        if force or now - self.last_write > 2:
            self.stats["restarts"] = self.session.restarts
            partial = self.stats_path.with_suffix(".tmp")   # the campaign reads it any time
            partial.write_text(json.dumps(self.stats))
            partial.replace(self.stats_path)
            self.last_write = now


def _never_raise(function):
    """An exception escaping into libFuzzer ends the campaign: log it, keep the input."""
    def guarded(data, *args):
        try:
            return function(data, *args)
        except Exception:  # noqa: BLE001 - reported, and fuzzing goes on
            traceback.print_exc()
            return data[:args[-2]] if len(args) >= 2 else data
    return guarded


@_never_raise
def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return encode(mutate(decode(data), Chooser(rng)), max_size)


@_never_raise
def custom_crossover(data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return encode(mutate(decode(data1), Chooser(rng), other=decode(data2)), max_size)


def main():
    config = WorkerConfig.load(sys.argv[1])
    worker = Worker(config)
    if not config.guided:
        try:
            worker.run_unguided()
        finally:
            worker.write_stats(force=True)
            worker.session.close()
        return
    worker.reserve_feedback()
    libfuzzer_args = [
        sys.argv[0], config.corpus, *config.seeds,
        f"-max_total_time={config.seconds}", "-reload=10", "-timeout=600",
        "-rss_limit_mb=4096", "-print_final_stats=1", f"-seed={config.index + 1}",
        "-len_control=0", "-max_len=8192",
        f"-artifact_prefix={Path(config.workdir) / 'logs'}/",
    ]
    atheris.Setup(libfuzzer_args, worker.test_one_input, custom_mutator=custom_mutator,
                  custom_crossover=custom_crossover)
    try:
        atheris.Fuzz()
    finally:
        worker.write_stats(force=True)
        worker.session.close()


if __name__ == "__main__":
    main()
