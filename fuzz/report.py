"""The campaign report: a markdown page with the findings table and plots over time."""

from __future__ import annotations

import csv
from pathlib import Path

from .findings import FindingStore


def _read_stats(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as handle:
        return [{k: (float(v) if k != "wall" else v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot(rows: list[dict], target: Path):
    import matplotlib

    matplotlib.use("Agg")  # no display on campaign machines
    import matplotlib.pyplot as plt

    # Seconds since each run of the campaign started; a resumed campaign starts again at 0.
    x = [row["seconds"] for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in zip(axes, ("coverage", "execs", "findings"),
                              ("model coverage (libFuzzer cov)", "executions", "confirmed findings")):
        ax.plot(x, [row[key] for row in rows])
        ax.set_title(title)
        ax.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


def write_report(workdir: Path) -> Path:
    rows = _read_stats(workdir / "stats.csv")
    store = FindingStore(workdir / "findings")
    lines = [f"# hmmfuzz campaign report: {workdir}", ""]
    if rows:
        last = rows[-1]
        lines += [f"- executions: {int(last['execs'])} in {last['seconds']:.0f} s "
                  f"(this run), model coverage {int(last['coverage'])}, corpus {int(last['corpus'])}, "
                  f"VM restarts {int(last['restarts'])}", ""]
        plot(rows, workdir / "report.png")
        lines += ["![coverage, executions and findings over time](report.png)", ""]
    lines += ["## Findings", "", "| signature | kernel | hits | reproduced on a fresh VM | first seen | last seen | directory |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for meta in store.all():
        repro = meta.get("reproduction")
        rate = (f"{repro['reproduced']}/{repro['runs']}" if repro else
                "not yet (the run stopped while it was reproduced)"
                if meta.get("confirmed") is False else "not checked")
        lines.append(f"| {meta['signature']} | {meta['kernel']} | {meta['hits']} | {rate} | "
                     f"{meta['first_seen']} | {meta['last_seen']} | {Path(meta['directory']).name} |")
    target = workdir / "report.md"
    target.write_text("\n".join(lines) + "\n")
    return target
