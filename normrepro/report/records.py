"""The committed per-run records (``results/runs/<experiment>/<label>/seed<k>/``: metrics.json + resolved
config.yaml, no checkpoints) and everything regenerated from them: tables, figures, the README's results summary."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from normrepro.errors import ConfigError
from normrepro.report import plots
from normrepro.report.cli import Report, build_report, write_report
from normrepro.report.registry import Experiment
from normrepro.report.summary import END, START, render_summary, splice
from normrepro.report.values import REPO_ROOT
from normrepro.utils.io import atomic_write_text

RECORD_FILES = ("metrics.json", "config.yaml")
CRASH_FILE = ".hydra/overrides.yaml"      # kept only when a run died before writing metrics.json


def machine_prefixes(roots: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Absolute paths of this machine that must not appear in a committed file, longest first."""
    paths = {os.path.abspath(p) for p in (*roots, REPO_ROOT)}
    paths |= {os.path.realpath(p) for p in paths}
    return sorted(paths, key=len, reverse=True)


def relativize(text: str, prefixes: Sequence[str]) -> str:
    """``text`` with every ``<prefix>/x`` written as ``x`` (relative to the repository / output root)."""
    for p in prefixes:
        text = text.replace(p + "/", "").replace(p, ".")
    return text


def _leaks(text: str) -> list[str]:
    homes = {os.path.expanduser("~"), tempfile.gettempdir()} - {"/", "~"}
    return [h for h in homes if h + "/" in text]


def publish_records(runs: Sequence[tuple[str, Path]], dest: str | os.PathLike,
                    roots: Sequence[str | os.PathLike] = ()) -> int:
    """Copy each ``(name, run dir)``'s record files into ``dest/<name>/``, replacing ``dest`` as a whole (stale runs
    of older settings disappear), with machine paths made relative; returns the number of runs copied."""
    dest = Path(dest)
    prefixes = machine_prefixes(roots)
    staging = dest.with_name(f".{dest.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    for name, src in runs:
        files = [f for f in RECORD_FILES if (src / f).is_file()]
        if "metrics.json" not in files and (src / CRASH_FILE).is_file():
            files.append(CRASH_FILE)
        for f in files:
            text = relativize((src / f).read_text(encoding="utf-8"), prefixes)
            if leaks := _leaks(text):
                raise ConfigError(f"run {name}: {f} holds a path of this machine ({leaks[0]}/...); not committing it")
            atomic_write_text(staging / name / f, text)
    staging.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return len(runs)


def regenerate(experiments: Sequence[Experiment], root: str | os.PathLike, every: Sequence[Experiment] = (),
               readme: str | os.PathLike | None = None) -> tuple[dict[str, Report], Path]:
    """Tables and figures of ``experiments`` from ``<root>/results/runs/``, the vs-paper figure of each paper table
    they touch, and ``results/summary.md`` over ``every`` experiment with records (spliced into ``readme`` when it
    has the markers). Returns the reports written and the summary path."""
    root = Path(root)
    results = root / "results"
    figures = results / "figures"
    reports: dict[str, Report] = {}
    for exp in experiments:
        runs_dir = results / "runs" / exp.name
        if not runs_dir.is_dir():
            raise ConfigError(f"no records for experiment {exp.name} under results/runs/; run it first")
        reports[exp.name] = write_report([runs_dir], results / exp.name, table=exp.table, baseline=exp.baseline,
                                         figures=figures, title=f"{exp.claim} ({exp.name})", roots=[root])
    present = {e.name: e for e in (every or experiments) if (results / "runs" / e.name).is_dir()}
    for name, exp in present.items():      # the summary covers every experiment with records
        if name not in reports:
            reports[name] = build_report([results / "runs" / name], name, table=exp.table, baseline=exp.baseline,
                                         roots=[root])
    for table in sorted({reports[e.name].table for e in experiments if reports[e.name].table}):
        panels = [(f"ours: {', '.join(sorted({str(g.data.dataset) for g in r.groups}))} ({name})", r.groups)
                  for name, r in reports.items() if r.table == table and name in present]
        plots.plot_vs_paper(panels, figures / f"{table}_vs_paper.png", title=f"{table}: ours vs paper, each against "
                            "its own baseline (points of error; > 0: worse)")
    items = [reports[n].summary(present[n].claim, f"results/{n}.md") for n in present]
    block = render_summary(items)
    summary = results / "summary.md"
    atomic_write_text(summary, f"# Results summary\n\n{START}\n{block}{END}\n")
    if readme is not None and Path(readme).is_file():
        text = Path(readme).read_text(encoding="utf-8")
        if START in text and END in text:
            atomic_write_text(readme, splice(text, block))
    return {n: r for n, r in reports.items() if n in {e.name for e in experiments}}, summary
