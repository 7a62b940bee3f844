"""`hmmfuzz fuzz`: a campaign of N workers, each with its own VM, sharing one corpus.

The campaign directory holds everything and is the unit of resumption: `corpus/` (program
texts libFuzzer keeps), `findings/` (one directory per signature), `workers/` (live
counters), `logs/`, `stats.csv` (the timeline) and `report.md` with its plots. Running
again with the same directory resumes from there. Ctrl-C stops the workers cleanly and
still writes the report.
"""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.kernel import KernelImage
from harness.prog import ParseError, format_program, load_program

from .findings import FindingStore
from .mutate import Chooser, generate
from .worker import WorkerConfig

COVERAGE = re.compile(r"cov: (\d+) ft: (\d+)")
GENERATED_SEEDS = 32
STATUS_EVERY = 5.0
# At the deadline a worker reproducing a new finding on a fresh VM may finish first (a few
# runs and a boot); a Ctrl-C stops it at once (the finding is on disk, unconfirmed).
REPRODUCTION_GRACE = 180.0


@dataclass
class Sample:
    seconds: float
    execs: int
    coverage: int
    features: int
    corpus: int
    findings: int
    restarts: int


class Campaign:
    def __init__(self, kernel: KernelImage, workdir: Path, seeds: list[Path], jobs: int,
                 seconds: int, accel: str, echo=print, guided: bool = True):
        self.kernel, self.workdir, self.seeds = kernel, workdir, seeds
        self.guided = guided
        self.jobs, self.seconds, self.accel, self.echo = jobs, seconds, accel, echo
        self.corpus = workdir / "corpus"
        self.store = FindingStore(workdir / "findings")
        self.workers: list[subprocess.Popen] = []
        self.stopping = False

    # ------------------------------------------------------------------ workers

    def _spawn(self, index: int) -> subprocess.Popen:
        config = WorkerConfig(index=index, bzimage=str(self.kernel.bzimage),
                              workdir=str(self.workdir), corpus=str(self.corpus),
                              seeds=[str(self.workdir / "seeds")], seconds=self.seconds,
                              accel=self.accel, guided=self.guided)
        config_path = self.workdir / "workers" / f"{index}.config.json"
        config_path.write_text(json.dumps(asdict(config)))
        log = open(self.workdir / "logs" / f"worker{index}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "fuzz.worker", str(config_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _stage_seeds(self):
        """The seed programs libFuzzer starts from, copied into WORKDIR/seeds: every program
        under the seed directories except known findings (a `regressions/` directory holds
        programs that crash or diverge on purpose; replay covers them, and as seeds they
        would only spend the campaign's first minutes rediscovering them)."""
        staged = self.workdir / "seeds"
        staged.mkdir(parents=True, exist_ok=True)
        # Besides the hand-written programs (long hmm-tests scenarios over 1024-page buffers),
        # small programs from the generator give the mutator short, varied starting points.
        chooser = Chooser(random.Random(GENERATED_SEEDS))
        for index in range(GENERATED_SEEDS):
            (staged / f"generated-{index:02d}.txt").write_text(format_program(generate(chooser)))
        for seed_dir in self.seeds:
            for path in sorted(seed_dir.rglob("*.txt")):
                if "regressions" in path.relative_to(seed_dir).parts or path.name == "README.txt":
                    continue
                # Canonical text, without comments: libFuzzer runs the seeds smallest
                # first, and a scenario's comments should not put it behind the generated
                # ones (a short campaign may end before it runs). A seed that does not parse
                # is named and skipped, as `hmmfuzz run` does.
                try:
                    program = load_program(path)
                except ParseError as error:
                    self.echo(f"input error: {error} (seed skipped)")
                    continue
                name = "-".join(path.relative_to(seed_dir).parts)
                (staged / name).write_text(format_program(program.with_ops(program.ops)))

    def _stop(self, *_):
        self.stopping = True

    # ------------------------------------------------------------------ status

    def sample(self, started: float) -> Sample:
        execs = restarts = 0
        for stats in self._worker_stats():
            execs += stats.get("execs", 0)
            restarts += stats.get("restarts", 0)
        coverage = features = 0
        for log in (self.workdir / "logs").glob("worker*.log"):
            found = COVERAGE.findall(_tail(log))
            if found:
                coverage = max(coverage, int(found[-1][0]))
                features = max(features, int(found[-1][1]))
        findings = sum(1 for meta in self.store.all() if meta.get("confirmed", True))
        return Sample(round(time.monotonic() - started, 1), execs, coverage, features,
                      sum(1 for _ in self.corpus.iterdir()), findings, restarts)

    def status_line(self, sample: Sample, previous: Sample | None) -> str:
        rate = 0.0
        if previous and sample.seconds > previous.seconds:
            rate = (sample.execs - previous.execs) / (sample.seconds - previous.seconds)
        return (f"[{sample.seconds:7.0f}s] execs {sample.execs} ({rate:.1f}/s)  cov {sample.coverage} "
                f"ft {sample.features}  corpus {sample.corpus}  findings {sample.findings}  "
                f"VM restarts {sample.restarts}")

    # ------------------------------------------------------------------ run

    def run(self) -> list[Sample]:
        for sub in ("corpus", "findings", "workers", "logs", "vms"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._stage_seeds()
        previous_handler = signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        started = time.monotonic()
        deadline = started + self.seconds
        samples: list[Sample] = []
        try:
            self.workers = [self._spawn(i) for i in range(self.jobs)]
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(STATUS_EVERY, max(0.1, deadline - time.monotonic())))
                for index, worker in enumerate(self.workers):
                    if worker.poll() is not None and time.monotonic() < deadline - 30:
                        # libFuzzer ended early (it stops on its own errors): start again.
                        self.workers[index] = self._spawn(index)
                samples.append(self.sample(started))
                self.echo(self.status_line(samples[-1], samples[-2] if len(samples) > 1 else None))
        finally:
            self._let_reproductions_finish()
            for worker in self.workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGINT)
            for worker in self.workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            signal.signal(signal.SIGINT, previous_handler)
            samples.append(self.sample(started))
            self._append_stats(samples)
        return samples

    def _let_reproductions_finish(self):
        grace_ends = time.monotonic() + REPRODUCTION_GRACE
        while not self.stopping and time.monotonic() < grace_ends and any(
                stats.get("reproducing") for stats in self._worker_stats()):
            time.sleep(1)

    def _worker_stats(self) -> list[dict]:
        found = []
        for path in (self.workdir / "workers").glob("[0-9]*.json"):
            if path.name.endswith(".config.json"):
                continue
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue   # being written
        return found

    def _append_stats(self, samples: list[Sample]):
        path = self.workdir / "stats.csv"
        fresh = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(samples[0])) + ["wall"])
            if fresh:
                writer.writeheader()
            for sample in samples:
                writer.writerow(asdict(sample) | {"wall": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")
