"""`hmmfuzz`: the command line.

Exit statuses (of `run`, and of the other commands where they apply):
0 every op agrees with the model; 1 a divergence; 2 usage or input error; 3 kernel crash or
hang (program and console log saved); 4 infrastructure failure (VM does not boot, a required
CONFIG_ option is missing, a kernel cannot be built). With several programs the most severe
status wins.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from harness.kernel import DEFAULT_VERSION, VERSIONS, KernelError, KernelImage, resolve_kernel
from harness.csource import NotRenderable
from harness.prog import Ending, ParseError, Program, format_program, load_program
from harness.runner.build import RunnerBuildError
from harness.vm.qemu import MachineConfig, MachineError
from harness.vm.session import KernelSession

from .judge import ProgramVerdict, Status, judge


def _log(message: str):
    click.echo(f"hmmfuzz: {message}", err=True)


def kernel_options(function):
    """--kernel VERSION|PATH, --source DIR, --bzimage FILE, --accel, --workdir."""
    options = [
        click.option("--kernel", "kernel", default=DEFAULT_VERSION, show_default=True,
                     help=f"Kernel version ({', '.join(VERSIONS)}), a bzImage file or a kernel tree."),
        click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Build this kernel tree (out of tree) with the project's config fragment."),
        click.option("--bzimage", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Boot this bzImage as it is (its config is checked in the guest)."),
        click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
                     show_default=True, help="QEMU accelerator; auto tries KVM once, else TCG."),
        click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("hmmfuzz-work"), show_default=True,
                     help="Where VM files, crash reports and logs go."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def obtain_kernel(kernel: str, source: Path | None, bzimage: Path | None) -> KernelImage:
    if source is None and bzimage is None and kernel not in VERSIONS:
        path = Path(kernel)
        if path.is_dir():
            source = path
        elif path.is_file():
            bzimage = path
        else:
            raise click.BadParameter(f"{kernel!r} is neither a version ({', '.join(VERSIONS)}) "
                                     "nor an existing bzImage or kernel tree", param_hint="--kernel")
    if source is not None or bzimage is not None:
        return resolve_kernel(source=source, bzimage=bzimage, log=_log)
    return resolve_kernel(kernel, log=_log)


def infrastructure_failure(error: Exception):
    click.echo(f"hmmfuzz: infrastructure failure: {error}", err=True)
    sys.exit(Status.INFRASTRUCTURE)


def _booted(kernel, source=None, bzimage=None, accel="auto", workdir=Path("hmmfuzz-work")):
    """A started KernelSession, or exit 4 saying why there is none."""
    try:
        image = obtain_kernel(kernel, source, bzimage)
        session = KernelSession(image, workdir, MachineConfig(accel=accel), log=_log)
        session.start()
        return session
    except (KernelError, MachineError, RunnerBuildError) as error:
        infrastructure_failure(error)


@click.group()
def main():
    """Differential fuzzer for the kernel's HMM / device-exclusive / device-private code."""


# ---------------------------------------------------------------------- kernel

@main.group()
def kernel():
    """Obtain kernels for the guest."""


@kernel.command("build")
@click.option("--version", "version", type=click.Choice(VERSIONS), default=DEFAULT_VERSION,
              show_default=True)
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bzimage", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def kernel_build(version, source, bzimage):
    """Build (or reuse from the cache) a kernel with the project's config fragment."""
    try:
        image = resolve_kernel(None if source or bzimage else version, source=source,
                               bzimage=bzimage, log=_log)
    except KernelError as error:
        infrastructure_failure(error)
    click.echo(f"{image.bzimage}  (version {image.version or 'unknown'}, {image.origin})")


# ---------------------------------------------------------------------- vm

@main.group()
def vm():
    """The QEMU guest."""


@vm.command("check")
@kernel_options
def vm_check(kernel, source, bzimage, accel, workdir):
    """Boot the guest, check its kernel has what hmmfuzz needs, and report."""
    try:
        image = obtain_kernel(kernel, source, bzimage)
        session = KernelSession(image, workdir, MachineConfig(accel=accel), log=_log)
        with session:
            hello, machine = session.hello, session.machine
            click.echo(f"kernel {hello.release} ({hello.machine}) booted in "
                       f"{machine.boot_seconds:.2f} s with {machine.accel.upper()}; devices: "
                       + ", ".join(f"/dev/hmm_dmirror{d}" for d in sorted(hello.devices)))
    except (KernelError, MachineError, RunnerBuildError) as error:
        infrastructure_failure(error)


# ---------------------------------------------------------------------- run

def collect_programs(paths: tuple[Path, ...]) -> tuple[list[Program], list[ParseError]]:
    programs, errors = [], []
    for path in paths:
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        for file in files:
            try:
                programs.append(load_program(file))
            except ParseError as error:
                errors.append(error)
    return programs, errors


def save_crash(verdict: ProgramVerdict, workdir: Path, serial: int) -> Path:
    """Keep the program and the console log before anything else happens to the VM."""
    name = Path(verdict.program.source).stem
    target = workdir / "crashes" / f"{time.strftime('%Y%m%d-%H%M%S')}-{serial:04d}-{name}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "program.txt").write_text(format_program(verdict.program))
    (target / "console.log").write_text(verdict.trace.console)
    (target / "report.txt").write_text("\n".join(verdict.lines(observations=True)) + "\n")
    return target


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--observations", is_flag=True,
              help="Print what the kernel reported for each op under its verdict (errno, "
                   "cpages, faults, pages, snapshot, pagemap, ...), checked or not.")
@kernel_options
def run(paths, observations, kernel, source, bzimage, accel, workdir):
    """Run programs (files, or directories of *.txt) on the kernel and judge them."""
    programs, errors = collect_programs(paths)
    for error in errors:
        click.echo(f"input error: {error}", err=True)
    status = Status.INPUT_ERROR if errors else Status.OK
    if not programs:
        sys.exit(status)
    session = _booted(kernel, source, bzimage, accel, workdir)
    counts = {s: 0 for s in Status}
    started, ops_checked = time.monotonic(), 0
    try:
        for serial, program in enumerate(programs, start=1):
            trace = session.run(program)
            verdict = judge(program, trace, session.last_info.died_signal)
            counts[verdict.status] += 1
            ops_checked += verdict.model.checked
            click.echo(f"{program.source}  (kernel {trace.kernel_release}, model profile "
                       f"{verdict.model.profile}): {verdict.status.name.lower().replace('_', ' ')}")
            if verdict.status is Status.KERNEL_CRASH:
                click.echo(f"  saved to {save_crash(verdict, workdir, serial)}")
            for line in verdict.lines(observations):
                click.echo(line)
            status = max(status, verdict.status)
    except MachineError as error:
        infrastructure_failure(error)
    finally:
        session.close()
    elapsed = time.monotonic() - started
    click.echo(f"{len(programs)} programs, {ops_checked} ops checked: {counts[Status.OK]} ok, "
               f"{counts[Status.DIVERGENCE]} diverged, {counts[Status.KERNEL_CRASH]} crashed or hung"
               f"; {elapsed:.1f} s ({len(programs) / elapsed:.1f} programs/s)")
    sys.exit(status)


# ---------------------------------------------------------------------- fuzz

@main.command()
@click.option("--time", "seconds", default=3600, show_default=True, help="Campaign length, seconds.")
@click.option("--jobs", default=1, show_default=True, help="Workers, each with its own VM.")
@click.option("--seeds", "seed_dirs", multiple=True, type=click.Path(exists=True, file_okay=False,
              path_type=Path), default=[Path("corpus")], show_default=True,
              help="Seed program directories (read only).")
@click.option("--unguided", is_flag=True,
              help="The baseline: fresh random programs instead of coverage guidance (same VMs, "
                   "judging, confirmation and report).")
@kernel_options
def fuzz(seconds, jobs, seed_dirs, unguided, kernel, source, bzimage, accel, workdir):
    """A coverage-guided campaign: Atheris/libFuzzer, guided by the model's code coverage
    and by what the kernel reported (errno after which op, cpages/faults, SNAPSHOT codes,
    signals, pagemap bits).

    Resumes from WORKDIR; Ctrl-C stops cleanly. Findings go to WORKDIR/findings, one
    directory per signature, each confirmed on a fresh VM; WORKDIR/report.md at the end."""
    from .campaign import Campaign
    from .report import write_report

    try:
        image = obtain_kernel(kernel, source, bzimage)
        with KernelSession(image, workdir / "vms" / "check", MachineConfig(accel=accel), log=_log):
            pass  # boot once: a kernel that cannot run programs fails here, with its reason
    except (KernelError, MachineError, RunnerBuildError) as error:
        infrastructure_failure(error)
    campaign = Campaign(image, workdir, list(seed_dirs), jobs, seconds, accel, echo=click.echo,
                        guided=not unguided)
    samples = campaign.run()
    report = write_report(workdir)
    last = samples[-1]
    click.echo(f"campaign over: {last.execs} executions, {last.findings} confirmed findings, "
               f"report in {report}")
    sys.exit(Status.DIVERGENCE if last.findings else Status.OK)


# ---------------------------------------------------------------------- random

@main.command("random")
@click.option("--count", default=100, show_default=True, help="Programs to generate and run.")
@click.option("--seed", default=0, show_default=True, help="Generator seed (same seed, same programs).")
@click.option("--ops", "op_set", type=click.Choice(["modelled", "all", "v1"]), default="modelled",
              show_default=True, help="modelled: the ops the reference model states (the fuzzer's "
              "generator); all: every op of the language (checking stops at the first op the "
              "model does not state); v1: the first op set.")
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep every program and trace here, for `hmmfuzz rejudge`.")
@kernel_options
def random_programs(count, seed, op_set, archive, kernel, source, bzimage, accel, workdir):
    """Unguided random programs: run each on the kernel, judge it, keep every finding."""
    from .archive import ArchiveWriter
    from .findings import FindingStore

    session = _booted(kernel, source, bzimage, accel, workdir)
    store = FindingStore(workdir / "findings")
    tally = Tally()
    writer = ArchiveWriter(archive) if archive else None
    started = time.monotonic()
    with session:
        try:
            for program in _random_programs(op_set, count, seed, session.hello.release):
                trace = session.run(program)
                died = session.last_info.died_signal
                if writer:
                    writer.add(program, trace, died)
                verdict = judge(program, trace, died)
                tally.add(verdict)
                recorded = store.record(verdict)
                if recorded and recorded.new:
                    click.echo(f"new finding: {recorded.signature}  ({recorded.directory})")
        except MachineError as error:
            infrastructure_failure(error)
        finally:
            if writer:
                writer.close()
    elapsed = time.monotonic() - started
    click.echo(f"{tally.summary()} in {elapsed:.0f} s ({tally.programs / elapsed:.1f}/s); "
               f"{len(store.all())} distinct findings in {store.root}")
    sys.exit(tally.worst())


def _random_programs(op_set: str, count: int, seed: int, kernel_release: str = "7.2.0"):
    """`count` programs from the chosen generator, reproducible from `seed` (the modelled
    generator also asks the model of `kernel_release` which ops it states)."""
    if op_set == "modelled":
        import random

        from .mutate import Chooser, generate

        chooser = Chooser(random.Random(seed))
        for _ in range(count):
            yield generate(chooser, kernel_release=kernel_release)
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from .strategies import programs

    # Hypothesis draws small programs again and again (about one in six of 600 is a
    # repeat): draw more than asked and keep the first `count` distinct ones.
    drawn: dict[str, Program] = {}

    @hypothesis_seed(seed)
    @settings(max_examples=3 * count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs(comments=False, extended=op_set == "all"))
    def draw(program):
        if len(drawn) < count:
            drawn.setdefault(format_program(program), program)

    draw()  # drawing is cheap next to running; the programs are then run in order
    yield from drawn.values()


class Tally:
    """Counts of a batch of judged programs, and how much of them the model checked."""

    def __init__(self):
        self.statuses = {s: 0 for s in Status}
        self.programs = self.ops = self.checked_ops = self.fully_checked = 0
        self.signatures: dict[str, int] = {}
        self.refusals: dict[str, int] = {}

    def add(self, verdict: ProgramVerdict):
        from .minimize import signature

        self.programs += 1
        self.statuses[verdict.status] += 1
        self.ops += len(verdict.program.ops)
        self.checked_ops += verdict.model.checked
        self.fully_checked += verdict.model.unmodelled_from is None
        refused = verdict.model.unmodelled_op
        if refused is not None:
            self.refusals[refused] = self.refusals.get(refused, 0) + 1
        found = signature(verdict)
        if found:
            self.signatures[found] = self.signatures.get(found, 0) + 1

    def summary(self) -> str:
        s = self.statuses
        return (f"{self.programs} programs: {s[Status.OK]} ok, {s[Status.DIVERGENCE]} diverged, "
                f"{s[Status.KERNEL_CRASH]} crashed or hung; {self.fully_checked} checked to the "
                f"end, {self.checked_ops}/{self.ops} ops checked")

    def refusal_lines(self, top: int = 10) -> list[str]:
        """Where checking stopped most often: the cases the model refuses, by name, as the
        next things worth stating (or drawing less often)."""
        ranked = sorted(self.refusals.items(), key=lambda item: -item[1])[:top]
        return [f"{hits:6d}  stopped at: {what}" for what, hits in ranked]

    def worst(self) -> Status:
        return max((s for s in Status if self.statuses[s]), default=Status.OK)


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def rejudge(archives):
    """Judge archived runs again with this tree's model (no VM): what a model change does to
    every program run so far. Lists each distinct divergence or crash with its count."""
    from .archive import runs

    tally = Tally()
    for path in archives:
        for run in runs(path):
            tally.add(judge(run.program, run.trace, run.died_signal))
    for found, hits in sorted(tally.signatures.items(), key=lambda item: -item[1]):
        click.echo(f"{hits:6d}  {found}")
    for line in tally.refusal_lines():
        click.echo(line)
    click.echo(tally.summary())
    sys.exit(tally.worst())


# ---------------------------------------------------------------------- replay, triage

@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@kernel_options
def replay(paths, kernel, source, bzimage, accel, workdir):
    """Replay a corpus: every program agrees with the model, or diverges exactly as its
    `# hmmfuzz-expect: <series> <signature>` line says (exit 1 otherwise)."""
    from .replay import corpus_files, replay as replay_one

    files = corpus_files(paths)
    session = _booted(kernel, source, bzimage, accel, workdir)
    failed = 0
    with session:
        for path in files:
            try:
                replayed = replay_one(session, path)
            except ParseError as error:
                click.echo(f"input error: {error}", err=True)
                failed += 1
                continue
            failed += not replayed.passed
            mark = "PASS" if replayed.passed else "FAIL"
            click.echo(f"{mark} {path} on {session.hello.release}: {replayed.explain()}")
    click.echo(f"{len(files) - failed} passed, {failed} failed")
    sys.exit(Status.DIVERGENCE if failed else Status.OK)


@main.command()
@click.argument("finding", type=click.Path(exists=True, path_type=Path))
@click.option("--kernels", default="6.1,6.12,7.2", show_default=True,
              help="Comma-separated kernel versions or bzImage paths.")
@click.option("--runs", default=3, show_default=True, help="Runs per kernel (fresh VM each kernel).")
@click.option("--regression", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the program here as a regression program for CI replay, with a "
                   "`# hmmfuzz-expect:` line for each kernel that reproduced it every time.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("hmmfuzz-work"))
def triage(finding, kernels, runs, regression, accel, workdir):
    """Which kernels reproduce a finding (a finding directory, a program file, or a
    minimized program), as a table with the model's verdict on each."""
    from .minimize import signature
    from .replay import series_of

    path = finding / "program.txt" if finding.is_dir() else finding
    if finding.is_dir() and (finding / "program.min.txt").exists():
        path = finding / "program.min.txt"  # what minimize left: the program worth keeping
    program = load_program(path)
    rows = []
    for kernel in kernels.split(","):
        session = _booted(kernel, accel=accel, workdir=workdir / "triage" / kernel.replace("/", "_"))
        with session:
            verdicts = [judge(program, session.run(program), session.last_info.died_signal)
                        for _ in range(runs)]
            release = session.hello.release
        signatures = [signature(v) for v in verdicts]
        failing = [s for s in signatures if s]
        first = next((v for v in verdicts if v.status is not Status.OK), verdicts[0])
        verdict = failing[0] if failing else _agreement(first)
        rows.append((kernel, release, f"{len(failing)}/{runs}", verdict, first))
    click.echo(f"{path}\n")
    click.echo("| kernel | release | reproduced | model verdict |")
    click.echo("| --- | --- | --- | --- |")
    for kernel, release, rate, verdict, _ in rows:
        click.echo(f"| {kernel} | {release} | {rate} | {verdict} |")
    for kernel, _, _, _, first in rows:
        if first.status is not Status.OK:
            click.echo(f"\n{kernel}:")
            for line in first.lines():
                click.echo(line)
    if regression:
        expect = [f"# hmmfuzz-expect: {series_of(release)} {verdict}"
                  for _, release, rate, verdict, _ in rows if rate == f"{runs}/{runs}"]
        table = [f"# {release}: reproduced {rate}: {verdict}" for _, release, rate, verdict, _ in rows]
        regression.write_text("\n".join([f"# hmmfuzz triage of {path}", *table, *expect, ""])
                              + format_program(program))
        click.echo(f"\nregression program written to {regression} ({len(expect)} expectations)")
    sys.exit(Status.DIVERGENCE if any(r[2][0] != "0" for r in rows) else Status.OK)


# ---------------------------------------------------------------------- minimize

@main.command()
@click.argument("finding", type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the minimized program goes (default: <file>.min.txt beside it).")
@kernel_options
def minimize(finding, output, kernel, source, bzimage, accel, workdir):
    """Reduce a failing program (a file, or a finding directory) while the same failure
    (signature) reproduces; the number of executions it took is reported and recorded."""
    import json

    from .minimize import minimize as reduce, signature

    program_file = finding / "program.txt" if finding.is_dir() else finding
    program = _load_or_exit(program_file)
    session = _booted(kernel, source, bzimage, accel, workdir)
    with session:
        def verdict_of(candidate: Program) -> ProgramVerdict:
            return judge(candidate, session.run(candidate), session.last_info.died_signal)

        wanted = signature(verdict_of(program))
        if wanted is None:
            click.echo(f"{program_file}: every op agrees with the model; nothing to minimize")
            sys.exit(Status.OK)
        click.echo(f"reproduced: {wanted}")
        result = reduce(program, lambda candidate: signature(verdict_of(candidate)) == wanted)
        final = verdict_of(result.program)
        output = output or program_file.with_suffix(".min.txt")
        output.write_text(f"# minimized: {wanted}\n# {result.ops_before} ops -> "
                          f"{len(result.program.ops)} ops in {result.executions} executions\n"
                          + format_program(result.program))
        click.echo(f"{result.ops_before} ops -> {len(result.program.ops)} ops in "
                   f"{result.executions} executions; written to {output}")
        c_files = _write_and_check_c(session, result.program, output, wanted)
    meta_path = program_file.with_name("finding.json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["minimized"] = {"program": output.name, "ops_before": result.ops_before,
                             "ops_after": len(result.program.ops), "executions": result.executions,
                             **c_files}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    for line in final.lines():
        click.echo(line)
    sys.exit(final.status)


def _agreement(verdict: ProgramVerdict) -> str:
    """An ok verdict in words, saying where the model stopped checking if it did."""
    if verdict.model.unmodelled_from is None:
        return "every op agrees with the model"
    return (f"the {verdict.model.unmodelled_from} ops checked agree; from op "
            f"{verdict.model.unmodelled_from} unchecked: {verdict.model.unmodelled}")


def _load_or_exit(path: Path) -> Program:
    """The program in `path`, or exit 2 with the file, line and what was expected."""
    try:
        return load_program(path)
    except ParseError as error:
        click.echo(f"input error: {error}", err=True)
        sys.exit(Status.INPUT_ERROR)


def _write_and_check_c(session, program: Program, output: Path, wanted: str) -> dict:
    """The C reproducer and TEST_F of a minimized program, and whether the reproducer,
    compiled and run once in the guest, shows the same finding."""
    from .reproducer import CompileError, run_in_guest, write_c

    stem = output.name.removesuffix(".txt").removesuffix(".min")
    try:
        written = write_c(program, session.hello.release, output.parent, stem, wanted)
        run = run_in_guest(session, written.reproducer.read_text())
    except NotRenderable as error:
        click.echo(f"no C reproducer: {error}")
        return {"c_reproducer": None, "c_reproducer_note": str(error)}
    except CompileError as error:
        click.echo(f"the C reproducer does not compile (a hmmfuzz bug): {error}", err=True)
        return {"c_reproducer": None, "c_reproducer_note": "does not compile"}
    shows = run.reproduces(wanted)
    click.echo(f"C reproducer {written.reproducer} and TEST_F {written.selftest}: run in the guest, "
               f"{run.outcome} ({'reproduces' if shows else 'does NOT reproduce'} the finding)")
    return {"c_reproducer": written.reproducer.name, "selftest": written.selftest.name,
            "c_reproduces": shows}


# ---------------------------------------------------------------------- reproduce

@main.command()
@click.argument("program_path", metavar="PROGRAM", type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also keep the C source here.")
@kernel_options
def reproduce(program_path, output, kernel, source, bzimage, accel, workdir):
    """Write a program (a file, or a finding directory) as a C reproducer that checks what
    the model expects, compile it, run it in the guest and show what it printed. Exit 0: every
    check held; 1: checks failed; 3: the kernel crashed or hung."""
    from .reproducer import run_in_guest, render

    path = program_path / "program.txt" if program_path.is_dir() else program_path
    program = _load_or_exit(path)
    session = _booted(kernel, source, bzimage, accel, workdir)
    with session:
        try:
            c_source = render(program, session.hello.release, f"hmmfuzz reproduce {path}")
        except NotRenderable as error:
            click.echo(f"{path}: {error}", err=True)
            sys.exit(Status.INPUT_ERROR)
        if output:
            output.write_text(c_source)
        run = run_in_guest(session, c_source)
        release = session.hello.release
    click.echo(run.execution.output, nl=False)
    if run.execution.ending is not Ending.COMPLETED and run.last_step:
        click.echo(f"the guest died in {run.last_step}")
    click.echo(f"{path} on {release}: {run.outcome}")
    for report in run.reports:
        click.echo(f"  kernel console: {report.title}")
    sys.exit(run.status)


if __name__ == "__main__":
    main()
