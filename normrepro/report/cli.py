"""``python -m normrepro.report <dirs> --out results/NAME``: aggregate run dirs into NAME.md + NAME.csv (+ figures).

    python -m normrepro.report results/runs/lp_bn_mnist5k --out results/lp_bn_mnist5k --figures results/figures
    python -m normrepro.report multirun/2024-05-01/12-00-00 --table lp_bn_imagenet --metric test_error

The table records the git commit(s) of its runs (several commits: an error unless --allow-mixed, which marks the
table; a dirty tree is marked) and no absolute path. Re-running on the same runs gives byte-identical files.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from normrepro.errors import ConfigError, choice_error
from normrepro.report import plots
from normrepro.report.aggregate import METRICS, Group, aggregate
from normrepro.report.paper import Paper, load_paper
from normrepro.report.provenance import CodeStamp, check_stamp, code_stamp
from normrepro.report.render import render_csv, render_markdown
from normrepro.report.runs import Run, collect_runs, incomplete_runs
from normrepro.report.summary import TableSummary
from normrepro.report.values import display_path, get_path, override_key_value
from normrepro.utils.io import atomic_write_text

FIGURES = ("error", "diff", "curves")


@dataclass
class Report:
    """Runs, groups and code stamp of one table, and the files :func:`write_report` wrote (None when not written)."""
    name: str
    runs: list[Run]
    groups: list[Group]
    stamp: CodeStamp
    table: str | None
    md: Path | None = None
    csv: Path | None = None
    figures: dict[str, Path] = field(default_factory=dict)

    def summary(self, claim: str | None = None, link: str | None = None) -> TableSummary:
        """This table as a row of the README summary."""
        return TableSummary(self.name, claim or self.name, self.groups, self.stamp, link)

    def counts(self) -> str:
        """"N group(s) from M run(s), K incomplete or crashed"."""
        return (f"{len(self.groups)} group(s) from {len(self.runs)} run(s), {len(incomplete_runs(self.runs))} "
                "incomplete or crashed")


def infer_table(runs: list[Run], paper: Paper) -> str | None:
    """The paper table the runs' experiment config names (``experiment.table``), when they all name the same."""
    names = {get_path(r.config, "experiment.table") for r in runs if r.metrics}
    names.discard(None)
    return names.pop() if len(names) == 1 and next(iter(names)) in paper.tables else None


def parse_baseline(spec: str | None) -> dict | None:
    """``"norm=l2,precision=fp32"`` -> {"norm": "l2", "precision": "fp32"}."""
    if not spec:
        return None
    pairs = [override_key_value(p) for p in spec.split(",") if p.strip()]
    if not pairs or any(v is None or not k for k, v in pairs):
        raise ConfigError(f"bad --baseline {spec!r}: want key=value[,key=value], e.g. norm=l2")
    return dict(pairs)


def build_report(dirs: Sequence[str | os.PathLike], name: str, table: str | None = None, metric: str | None = None,
                 paper: Paper | None = None, baseline: dict | None = None, allow_mixed: bool = False,
                 roots: Sequence[str | os.PathLike] = ()) -> Report:
    """Collect and aggregate the runs below ``dirs`` (nothing written). ``table`` defaults to the runs'
    ``experiment.table``; runs from several commits are a ConfigError unless ``allow_mixed``."""
    dirs = [str(d) for d in dirs]
    if not dirs:
        raise ConfigError("no sweep dir given")
    paper = paper or load_paper()
    if table is not None and table not in paper.tables:
        raise choice_error("paper table", table, paper.tables)
    runs = collect_runs(dirs, paper, roots)
    if not runs:
        raise ConfigError(f"no run dirs (with .hydra/overrides.yaml or metrics.json) below "
                          f"{', '.join(display_path(d, roots) for d in dirs)}")
    stamp = code_stamp(runs)
    check_stamp(stamp, allow_mixed)
    table = table or infer_table(runs, paper)
    return Report(name, runs, aggregate(runs, paper, table=table, metric=metric, baseline=baseline), stamp, table)


def write_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike, table: str | None = None,
                 metric: str | None = None, paper_path: str | os.PathLike | None = None,
                 baseline: dict | None = None, allow_mixed: bool = False, figures: str | os.PathLike | None = None,
                 title: str | None = None, roots: Sequence[str | os.PathLike] = ()) -> Report:
    """:func:`build_report`, then atomically write ``<out>.md``, ``<out>.csv`` and, with ``figures``, the PNGs
    ``<figures>/<name>_{error,diff,curves}.png``."""
    out = Path(out)
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    paper = load_paper(paper_path)
    report = build_report(dirs, out.name, table, metric, paper, baseline, allow_mixed, roots)
    groups = report.groups
    report.md, report.csv = out.with_name(out.name + ".md"), out.with_name(out.name + ".csv")
    sources = [display_path(d, roots) for d in dirs]
    atomic_write_text(report.md, render_markdown(groups, report.runs, paper, sources, report.stamp, report.table,
                                                 title or f"Results: {out.name}"))
    atomic_write_text(report.csv, render_csv(groups))
    if figures is not None:
        fig_dir, name = Path(figures), out.name
        drawn = {"error": plots.plot_final_error(groups, fig_dir / f"{name}_error.png", f"{name}: final test error"),
                 "diff": plots.plot_diff(groups, fig_dir / f"{name}_diff.png", f"{name}: difference from baseline"),
                 "curves": plots.plot_curves(groups, fig_dir / f"{name}_curves.png",
                                             title=f"{name}: test error per epoch")}
        report.figures = {k: p for k, p in drawn.items() if p is not None}
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m normrepro.report``."""
    p = argparse.ArgumentParser(prog="python -m normrepro.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="sweep dirs (e.g. multirun/<date>/<time>, results/runs/<experiment>)")
    p.add_argument("--out", help="output path without suffix (writes <out>.md, <out>.csv); "
                                 "default results/<basename of the first dir>")
    p.add_argument("--table", help="paper table to compare with (an id in normrepro/report/paper.yaml; default: the "
                                   "runs' experiment.table); allows a different model as reference")
    p.add_argument("--metric", choices=METRICS, help="default: the table's unit, else test_acc")
    p.add_argument("--baseline", help="settings of the baseline arm, e.g. norm=l2 (default: the table's)")
    p.add_argument("--figures", help="also draw <figures>/<name>_{error,diff,curves}.png")
    p.add_argument("--allow-mixed", action="store_true", help="runs from several commits: write a marked table "
                                                              "instead of refusing")
    p.add_argument("--paper", help="paper numbers file (default: the packaged normrepro/report/paper.yaml)")
    return p


def default_out(dirs: Sequence[str]) -> Path:
    """results/<basename of the first dir>."""
    return Path("results") / (Path(os.path.normpath(str(dirs[0]))).name or "report")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input prints one ``error: ...`` line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        report = write_report(args.dirs, args.out or default_out(args.dirs), args.table, args.metric, args.paper,
                              parse_baseline(args.baseline), args.allow_mixed, args.figures)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wrote = [display_path(p) for p in (report.md, report.csv, *report.figures.values())]
    print(f"wrote {', '.join(wrote)}: {report.counts()}")
    return 0


def entry() -> None:
    """Console script ``normrepro-report`` (= ``python -m normrepro.report``)."""
    sys.exit(main())
