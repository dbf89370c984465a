"""Figures from aggregated results (used by notebooks/reproduce_tables.ipynb and `make demo`).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot state, no display
needed, PNGs written atomically.

    runs = report.collect_runs(["multirun/2024-05-01/12-00-00"])
    groups = report.aggregate(runs, table="lp_bn_imagenet", metric="test_acc")
    plot_curves(runs, "results/figures/curves.png")
    plot_bars(groups, "results/figures/bars.png")
"""
from __future__ import annotations

import io
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from normrepro.utils.io import atomic_write_bytes


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _short_labels(keys: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    common = set.intersection(*(set(k) for k in keys)) if keys else set()
    return {k: (" ".join(o for o in k if o not in common) or " ".join(k) or "(defaults)") for k in keys}


def curves(runs: list[dict], key: str = "test_acc", statuses: Sequence[str] = ("completed",)) -> dict[str, dict]:
    """Per group: epochs, mean and sample std of ``key`` per epoch over its runs, and n.

    Runs used: usable completed runs, plus runs whose status is in ``statuses`` (e.g. "diverged", up to the
    epoch where they stopped; non-finite values are skipped).
    """
    by_group: dict[str, list[dict]] = {}
    for r in runs:
        usable = r.get("problem") is None or (r.get("status") in statuses and r.get("status") != "completed")
        if usable and r.get("epochs") and r.get("group"):
            by_group.setdefault(r["group"], []).append(r)
    out = {}
    for group, members in sorted(by_group.items()):
        per_epoch: dict[int, list[float]] = {}
        for r in members:
            for row in r["epochs"]:
                v = row.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v) and "epoch" in row:
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(v))
        epochs = sorted(per_epoch)
        mean = [statistics.fmean(per_epoch[e]) for e in epochs]
        std = [statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
        out[group] = {"epochs": epochs, "mean": mean, "std": std, "n": len(members),
                      "overrides": tuple(members[0].get("group_overrides", ()))}
    return out


def plot_curves(runs: list[dict], path: str | os.PathLike, key: str = "test_acc", title: str | None = None,
                statuses: Sequence[str] = ("completed",), logy: bool = False) -> Path | None:
    """Test accuracy (or ``key``) per epoch, one line per group: mean over seeds, shaded ± sample std.

    ``runs`` from ``report.collect_runs``; ``statuses``: which runs besides completed ones to draw (e.g.
    ("completed", "diverged") for the fp16 figure). Returns the PNG path, or None when there is nothing to draw.
    """
    data = curves(runs, key, statuses)
    if not data:
        return None
    labels = _short_labels([d["overrides"] for d in data.values()])
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for group, d in data.items():
        label = labels[d["overrides"]]
        if len({v["overrides"] for v in data.values()}) < len(data):
            label = group
        if not d["epochs"]:
            continue
        line, = ax.plot(d["epochs"], d["mean"], marker="o", ms=3, label=f"{label} (n={d['n']})")
        lo = [m - s for m, s in zip(d["mean"], d["std"])]
        hi = [m + s for m, s in zip(d["mean"], d["std"])]
        ax.fill_between(d["epochs"], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    if logy:
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(key.replace("_", " ") + (" %" if "acc" in key else ""))
    ax.set_title(title or f"{key.replace('_', ' ')} per epoch (mean over seeds, shaded ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_bars(groups: list[dict], path: str | os.PathLike, title: str | None = None,
              only_matched: bool = False) -> Path | None:
    """Ours (mean ± std over seeds) beside the paper's value (± its reading uncertainty or half its range).

    ``groups`` from ``report.aggregate``; values in the groups' metric. Groups without a paper cell get only
    our bar (or are left out with ``only_matched``). Returns the PNG path, or None when there is nothing to draw.
    """
    rows = [g for g in groups if g.get("mean") is not None or g.get("paper_value") is not None]
    if only_matched:
        rows = [g for g in rows if g.get("paper_value") is not None]
    if not rows:
        return None
    metric = rows[0].get("metric", "test_acc")
    fig = _figure(max(6.0, 1.1 * len(rows) + 2), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    xs = list(range(len(rows)))
    ours = [g["mean"] if g.get("mean") is not None else math.nan for g in rows]
    ours_err = [g.get("std") or 0.0 for g in rows]
    ax.bar([x - width / 2 for x in xs], ours, width, yerr=ours_err, capsize=3, label="ours (mean ± std)",
           color="tab:blue")
    paper = {True: ([], [], []), False: ([], [], [])}      # reference_only -> x, value, error bar
    for x, g in zip(xs, rows):
        if g.get("paper_value") is None:
            continue
        half_range = (g["paper_high"] - g["paper_low"]) / 2 if g.get("paper_low") is not None else 0.0
        px, pv, perr = paper[bool(g.get("reference_only"))]
        px.append(x + width / 2)
        pv.append(g["paper_value"])
        perr.append(max(half_range, (g["paper"] or {}).get("uncertainty") or 0.0))
    for ref, (px, pv, perr) in paper.items():
        if pv:
            ax.bar(px, pv, width, yerr=perr, capsize=3, color="tab:orange", alpha=0.45 if ref else 1.0,
                   hatch="//" if ref else None,
                   label="paper, reference only (different setting)" if ref else "paper (same setting)")
    finite = [v for v in ours if not math.isnan(v)] + paper[True][1] + paper[False][1]
    errs = ours_err + paper[True][2] + paper[False][2] + [0.0]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
    pad = max(1.0, 0.15 * (hi - lo)) + max(errs)
    bottom, top = max(0.0, lo - pad), min(100.0, hi + pad)
    ax.set_ylim(bottom, top)
    for x, g, v in zip(xs, rows, ours):
        if math.isnan(v):   # no completed run: say why instead of drawing a bar
            text = ", ".join(f"{c} {st}" for st, c in (g.get("statuses") or {}).items()) or "no result"
            ax.text(x - width / 2, bottom + 0.02 * (top - bottom), text, rotation=90, ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(xs)
    ax.set_xticklabels([g.get("label", g["group"]) for g in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final test accuracy %" if metric == "test_acc" else "final top-1 test error %")
    ax.set_title(title or "ours vs paper")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
