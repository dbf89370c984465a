"""Markdown and CSV of one table (groups with their statistics), and the results summary the README embeds."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from normrepro.report.aggregate import Group
from normrepro.report.paper import Paper
from normrepro.report.provenance import CodeStamp
from normrepro.report.runs import Run, incomplete_runs
from normrepro.report.stats import Summary
from normrepro.report.values import distinct, md_cell, same, show

PAPER_DATASETS = ("cifar10", "cifar100", "imagenet")
METRIC_TEXT = {"test_acc": "final test accuracy %", "test_error": "final test error % (100 − accuracy)"}
STATS_TEXT = ("Statistics: n = completed runs; mean ± sample std (ddof = 1); 95 % CI of the mean from the t "
              "distribution (n − 1 df; none when n = 1). Δ = arm − baseline with its 95 % CI and a two-sided p: a "
              "paired t-test by seed when both arms completed the same seeds, Welch's t-test otherwise; each arm "
              "\"differs (p < 0.05)\" or is \"within noise\" (no correction for multiple comparisons). \"as the "
              "paper?\": our direction against our baseline (better / worse / within noise) against the paper's "
              "against its own baseline cell (a paper difference within its reading uncertainty counts as same).")


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def pm(s: Summary) -> str:
    """"mean ± std" ("mean" when n = 1, "–" when n = 0)."""
    if s.mean is None:
        return "–"
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f}"


def ci_text(s: Summary) -> str:
    """"[low, high]", or the reason there is none."""
    if s.ci_low is None:
        return "n = 1: no CI" if s.n == 1 else ""
    return f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"


def diff_text(g: Group) -> str:
    """"+0.31 [−0.10, +0.72]" against the baseline; "baseline" for the baseline itself."""
    if g.is_baseline:
        return "baseline"
    c = g.comparison
    if c is None or c.diff is None:
        return ""
    ci = f" [{_signed(c.ci_low)}, {_signed(c.ci_high)}]" if c.ci_low is not None else ""
    return _signed(c.diff) + ci


def p_text(g: Group) -> str:
    """"0.031 (paired t, n = 5)", or "" without a test."""
    c = g.comparison
    if c is None or c.p is None:
        return ""
    p = "< 0.001" if c.p < 0.001 else f"{c.p:.3f}"
    return f"{p} ({c.test_name})"


def verdict_text(g: Group) -> str:
    """"differs (p < 0.05)", "within noise", "no test (...)"; "" for the baseline."""
    return "" if g.is_baseline or g.comparison is None else g.comparison.verdict


def paper_text(g: Group) -> str:
    """The paper's value (range, uncertainty, best), "(ref.)" when only a reference."""
    m = g.paper
    if m is None or m.value is None:
        return ""
    unc = f" ±{m.cell.uncertainty:g}" if m.cell.uncertainty is not None else ""
    text = f"{m.low:.2f}–{m.high:.2f} (mid {m.value:.2f}){unc}" if m.low is not None else f"{m.value:.2f}{unc}"
    if m.best is not None:
        text += f" (best {m.best:.2f})"
    return text + (" (ref.)" if m.reference_only else "")


def paper_delta_text(g: Group) -> str:
    """The paper's difference from its own baseline cell ± its reading uncertainty."""
    m = g.paper
    if g.is_baseline:
        return "baseline"
    if m is None or m.delta is None:
        return ""
    return f"{_signed(m.delta)} ±{m.delta_spread:.2f}"


def _header(groups: list[Group], runs: list[Run], paper: Paper, sources: Sequence[str], table: str | None,
            stamp: CodeStamp) -> list[str]:
    used = [r for r in runs if r.usable]
    lines = [f"Made by `python -m normrepro.report` from {len(runs)} run dir(s) below: "
             + ", ".join(f"`{s}`" for s in sources) + ".", "", stamp.line(), "", "## What these numbers are", ""]
    data = sorted({f"{show(g.data.dataset) or 'unknown dataset'} (image size {show(g.data.image_size) or '?'}, "
                   f"train images {show(g.data.num_train) or '?'})" for g in groups})
    lines.append("- Data: " + ("; ".join(data) or "none"))
    for what, key in (("Models", "model"), ("Norms", "norm"), ("Precision", "precision")):
        lines.append(f"- {what}: " + (", ".join(distinct(g.settings.get(key) for g in groups)) or "not recorded"))
    lines.append("- Epochs: " + (", ".join(distinct(e for g in groups for e in g.epochs)) or "none completed"))
    lines.append("- Hardware: " + ("; ".join(distinct(h for g in groups for h in g.hardware)) or "not recorded"))
    lines.append("- Seeds: " + (", ".join(distinct(r.seed for r in used)) or "none")
                 + f" ({len(used)} completed run(s) in {len(groups)} group(s))")
    base = sorted({g.baseline.label for g in groups if g.baseline is not None})
    lines.append("- Baseline arm: " + (", ".join(base) or "none (no group matches the table's baseline)"))
    datasets = distinct(g.data.dataset for g in groups)
    off = [d for d in datasets if not any(same(d, p) for p in PAPER_DATASETS)]
    if off or not datasets:
        lines += ["", f"**These runs use {', '.join(off) or 'an unknown dataset'}, not the paper's datasets "
                  "(CIFAR-10/100, ImageNet). Their numbers are NOT the paper's numbers: compare the orderings "
                  "(differences from each one's own baseline), not the values; the paper's values are shown "
                  "as a reference only (ref.).**"]
    if table:
        t = paper.tables[table]
        lines += ["", f"Paper table: `{table}`: {t.title}. Setting: "
                  + ", ".join(f"{k}={show(v)}" for k, v in t.settings.items()) + "."]
    return lines + ["", STATS_TEXT]


def render_markdown(groups: list[Group], runs: list[Run], paper: Paper, sources: Sequence[str], stamp: CodeStamp,
                    table: str | None = None, title: str | None = None) -> str:
    """The table of one report as Markdown: header, results with statistics, paper cells, incomplete runs."""
    metric = groups[0].metric if groups else "test_acc"
    what = METRIC_TEXT[metric]
    lines = [f"# {title or 'Results'}", "", *_header(groups, runs, paper, sources, table, stamp), "", "## Results", ""]
    header = ["arm", "n", "seeds", f"{what}: mean ± std", "95 % CI", "Δ vs baseline [95 % CI]", "p (test)",
              "verdict", "best epoch: mean ± std", "paper", "paper Δ vs its baseline", "as the paper?", "overrides",
              "note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for g in groups:
        row = [g.label, str(g.n), " ".join(map(str, g.seeds)), pm(g.summary), ci_text(g.summary), diff_text(g),
               p_text(g), verdict_text(g), pm(g.best), paper_text(g), paper_delta_text(g),
               g.ordering.text() if g.ordering else "", f"`{g.name}`", g.note]
        lines.append("| " + " | ".join(md_cell(x) for x in row) + " |")
    if not groups:
        lines.append("| (no run wrote metrics) |" + " |" * (len(header) - 1))
    cells = {(g.paper.cell.table, g.paper.cell.index): g.paper.cell for g in groups if g.paper}
    cells.update({(g.paper.base_cell.table, g.paper.base_cell.index): g.paper.base_cell
                  for g in groups if g.paper and g.paper.base_cell})
    if cells:
        lines += ["", "## Paper cells used", ""]
        order = {tid: i for i, tid in enumerate(paper.tables)}
        for (tid, _), c in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1])):
            val = f"{c.low:g}–{c.high:g}" if c.low is not None else ("unknown" if c.value is None else f"{c.value:g}")
            best = f", best {c.best:g}" if c.best is not None else ""
            unc = f" ±{c.uncertainty:g}" if c.uncertainty is not None else ""
            desc = ", ".join(f"{k}={show(v)}" for k, v in c.settings.items() if k not in ("regime", "epochs")
                             and v is not None)
            lines.append(f"- `{tid}` {desc}: {val}{unc} {c.metric}{best}. Source: {c.source}.")
    lines += ["", "## Incomplete or crashed runs", ""]
    bad = incomplete_runs(runs)
    if bad:
        lines += ["| run dir | status | epochs done | reason |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(md_cell(x) for x in (f"`{r.path}`", r.status, show(r.epochs_done), r.problem))
                  + " |" for r in bad]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("group", "label", "overrides", "n", "seeds", "statuses", "metric", "mean", "std", "ci_low", "ci_high",
              "test_acc_mean", "test_acc_std", "best_mean", "best_std", "baseline", "test", "diff", "diff_ci_low",
              "diff_ci_high", "p", "verdict", "dataset", "image_size", "num_train", "model", "norm", "precision",
              "loss_scaling", "arm", "weight_norm", "l1_scale", "epochs", "hardware", "git_commits", "paper_table",
              "paper_cell", "paper_metric", "paper_value", "paper_low", "paper_high", "paper_best",
              "paper_uncertainty", "paper_source", "reference_only", "paper_delta", "paper_delta_spread",
              "ordering_ours", "ordering_paper", "ordering", "note", "runs")


def _csv_row(g: Group) -> dict:
    s, c, m, o = g.settings, g.comparison, g.paper, g.ordering
    cell = m.cell if m else None
    return {
        "group": g.name, "label": g.label, "overrides": " ".join(g.overrides), "n": g.n,
        "seeds": " ".join(map(str, g.seeds)), "statuses": " ".join(f"{k}:{v}" for k, v in g.statuses.items()),
        "metric": g.metric, "mean": _num(g.summary.mean), "std": _num(g.summary.std), "ci_low": _num(g.summary.ci_low),
        "ci_high": _num(g.summary.ci_high), "test_acc_mean": _num(g.acc.mean), "test_acc_std": _num(g.acc.std),
        "best_mean": _num(g.best.mean), "best_std": _num(g.best.std),
        "baseline": "" if g.baseline is None else ("(this)" if g.is_baseline else g.baseline.name),
        "test": c.test if c else "", "diff": _num(c.diff if c else None),
        "diff_ci_low": _num(c.ci_low if c else None), "diff_ci_high": _num(c.ci_high if c else None),
        "p": "" if c is None or c.p is None else f"{c.p:.6g}", "verdict": verdict_text(g),
        "dataset": show(g.data.dataset), "image_size": show(g.data.image_size), "num_train": show(g.data.num_train),
        **{k: show(s.get(k)) for k in ("model", "norm", "precision", "loss_scaling", "arm", "weight_norm",
                                       "l1_scale")},
        "epochs": " ".join(map(str, g.epochs)), "hardware": "; ".join(g.hardware),
        "git_commits": " ".join(g.git_commits), "paper_table": cell.table if cell else "",
        "paper_cell": "" if cell is None else f"{cell.table}[{cell.index}]",
        "paper_metric": cell.metric if cell else "",
        "paper_value": _num(m.value if m else None), "paper_low": _num(m.low if m else None),
        "paper_high": _num(m.high if m else None), "paper_best": _num(m.best if m else None),
        "paper_uncertainty": show(cell.uncertainty) if cell else "", "paper_source": cell.source if cell else "",
        "reference_only": ("yes" if m.reference_only else "no") if m else "",
        "paper_delta": _num(m.delta if m else None), "paper_delta_spread": _num(m.delta_spread if m else None),
        "ordering_ours": show(o.ours) if o else "", "ordering_paper": show(o.paper) if o else "",
        "ordering": o.agrees if o else "", "note": g.note, "runs": " ".join(sorted(r.path for r in g.runs)),
    }


def render_csv(groups: list[Group]) -> str:
    """The groups as CSV (one row each, every number unrounded to 4 decimals)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for g in groups:
        row = _csv_row(g)
        w.writerow([row[k] for k in CSV_FIELDS])
    return buf.getvalue()
