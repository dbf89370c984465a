"""Figures of a table: final error per arm (log axis), difference from the baseline with its 95 % CI, ours vs the
paper (separate panels, each against its own baseline), and per-epoch curves. One fixed colour per norm
(``labels.NORM_COLORS``), short labels, no raw override strings. Drawn on a bare ``matplotlib.figure.Figure``
(Agg canvas, no pyplot state) and written atomically; every function returns the PNG path, or None when there
is nothing to draw."""
from __future__ import annotations

import io
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from normrepro.report.aggregate import Group
from normrepro.report.labels import group_norm, norm_color
from normrepro.report.values import primary
from normrepro.utils.io import atomic_write_bytes

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


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


def _plain_log_ticks(axis) -> None:
    """Tick labels 2, 3, 5, 10 rather than 2×10⁰ on a log axis."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def _errors(g: Group) -> list[float]:
    """Final test error % of the group's completed runs."""
    return [100.0 - r.test_acc for r in g.runs if r.usable]


def _as_error_diff(g: Group) -> tuple[float, float, float] | None:
    """(Δ, low, high) of the group's difference from its baseline, in error points (acc tables flipped)."""
    c = g.comparison
    if c is None or c.diff is None or c.ci_low is None:
        return None
    if g.metric == "test_error":
        return c.diff, c.ci_low, c.ci_high
    return -c.diff, -c.ci_high, -c.ci_low


def _styles(groups: Sequence[Group]) -> dict[str, tuple[str, str, str]]:
    """(colour, linestyle, marker) per group name: colour from the norm, style by rank among the norm's groups."""
    seen: dict[str, int] = {}
    out = {}
    for g in groups:
        norm = str(group_norm(g.settings, g.overrides))
        i = seen.get(norm, 0)
        seen[norm] = i + 1
        out[g.name] = (norm_color(norm), LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
    return out


def plot_final_error(groups: Sequence[Group], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Final test error % per arm on a log axis: every seed as a dot, the mean and its 95 % CI as a bar."""
    rows = [g for g in groups if _errors(g)]
    if not rows:
        return None
    styles = _styles(rows)
    fig = _figure(max(5.0, 0.9 * len(rows) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    floor = min([e for g in rows for e in _errors(g) if e > 0] or [0.1]) / 2
    for x, g in enumerate(rows):
        colour, _, marker = styles[g.name]
        errs = [max(e, floor) for e in _errors(g)]
        jitter = [x - 0.12 + 0.24 * i / max(1, len(errs) - 1) for i in range(len(errs))]
        ax.scatter(jitter, errs, s=14, color=colour, alpha=0.55, marker=marker, linewidths=0)
        mean = statistics.fmean(_errors(g))
        s = g.summary
        half = s.half_width or 0.0
        lo, hi = max(mean - half, floor), mean + half
        ax.errorbar([x + 0.3], [max(mean, floor)], yerr=[[max(mean, floor) - lo], [hi - max(mean, floor)]],
                    fmt=marker, color=colour, capsize=4, ms=7, label=None)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{g.label}\n(n={g.n})" for g in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final test error % (log scale)")
    ax.set_title(title or "final test error: seeds (dots), mean and 95 % CI (bar)", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    return _save(fig, path)


def plot_diff(groups: Sequence[Group], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Each arm's difference in final test error from its baseline, with its 95 % CI, p and verdict."""
    rows = [(g, d) for g in groups if (d := _as_error_diff(g)) is not None]
    if not rows:
        return None
    styles = _styles([g for g, _ in rows])
    fig = _figure(7.5, 0.55 * len(rows) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    for y, (g, (d, lo, hi)) in enumerate(rows):
        colour, _, marker = styles[g.name]
        ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt=marker, color=colour, capsize=4, ms=6)
        p = g.comparison.p
        ptxt = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
        ax.annotate(f"{ptxt}, {g.comparison.verdict}", (hi, y), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{g.label} − {g.baseline.label}" for g, _ in rows], fontsize=8)
    ax.invert_yaxis()
    lo_all = min(lo for _, (_, lo, _) in rows)
    hi_all = max(hi for _, (_, _, hi) in rows)
    span = max(hi_all - lo_all, 1e-3)
    ax.set_xlim(min(lo_all, 0.0) - 0.1 * span, max(hi_all, 0.0) + 0.6 * span)
    ax.set_xlabel("Δ final test error vs baseline (points; > 0: worse), mean and 95 % CI")
    ax.set_title(title or "difference from the baseline", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _paper_error_delta(g: Group) -> tuple[float, float] | None:
    m = g.paper
    if m is None or m.delta is None or g.is_baseline:
        return None
    return (m.delta if g.metric == "test_error" else -m.delta), m.delta_spread


def _paper_panel_title(panels: Sequence[tuple[str, Sequence[Group]]]) -> str:
    cells = [g.paper.cell for _, groups in panels for g in groups if g.paper and g.paper.delta is not None]
    if not cells:
        return "paper"
    what = [primary(cells[0].settings.get(k)) for k in ("dataset", "model") if cells[0].settings.get(k)]
    return f"paper ({', '.join(what)}: {cells[0].table})"


def plot_vs_paper(panels: Sequence[tuple[str, Sequence[Group]]], path: str | os.PathLike,
                  title: str | None = None) -> Path | None:
    """Ours vs the paper as differences from each one's own baseline, one panel per dataset and one for the paper:
    a digits accuracy never shares an axis with an ImageNet number."""
    labels: list[str] = []
    paper_pts: dict[str, tuple[float, float, str]] = {}
    for _, groups in panels:
        for g in groups:
            if g.baseline is None or g.is_baseline:
                continue
            if g.label not in labels:
                labels.append(g.label)
            pd = _paper_error_delta(g)
            if pd is not None and g.label not in paper_pts:
                paper_pts[g.label] = (*pd, norm_color(group_norm(g.settings, g.overrides)))
    if not labels:
        return None
    cols = [(_paper_panel_title(panels), None)] + [(name, groups) for name, groups in panels]
    fig = _figure(3.3 * len(cols) + 1.5, 0.5 * len(labels) + 1.8)
    axes = fig.subplots(1, len(cols), sharey=True, squeeze=False)[0]
    for ax, (name, groups) in zip(axes, cols):
        if groups is None:
            for label, (d, spread, colour) in paper_pts.items():
                ax.errorbar([d], [labels.index(label)], xerr=[[spread], [spread]], fmt="s", color=colour, capsize=4)
            if not paper_pts:
                ax.text(0.5, 0.5, "no paper value", transform=ax.transAxes, ha="center", fontsize=8)
            ax.set_xlabel("Δ error vs paper baseline\n(± reading uncertainty)", fontsize=8)
        else:
            for g in groups:
                if (d := _as_error_diff(g)) is not None and g.label in labels:
                    ax.errorbar([d[0]], [labels.index(g.label)], xerr=[[d[0] - d[1]], [d[2] - d[0]]], fmt="o",
                                color=norm_color(group_norm(g.settings, g.overrides)), capsize=4)
            ax.set_xlabel("Δ error vs our baseline\n(95 % CI)", fontsize=8)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title or "ours vs paper: each against its own baseline (points of error; > 0: worse)", fontsize=10,
                 y=1.03)
    return _save(fig, path)


def curves(g: Group, key: str) -> tuple[list[int], list[float], list[float], int]:
    """(epochs, mean, std, runs) of ``key`` per epoch over the group's runs with per-epoch rows (diverged runs up
    to where they stopped); ``key`` "test_error" = 100 − test_acc; non-finite values are skipped."""
    per_epoch: dict[int, list[float]] = {}
    members = [r for r in g.runs if r.epochs and (r.usable or r.status == "diverged")]
    for r in members:
        for row in r.epochs:
            v = 100.0 - row["test_acc"] if key == "test_error" and "test_acc" in row else row.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and "epoch" in row:
                per_epoch.setdefault(int(row["epoch"]), []).append(float(v))
    epochs = sorted(per_epoch)
    mean = [statistics.fmean(per_epoch[e]) for e in epochs]
    std = [statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, mean, std, len(members)


def plot_curves(groups: Sequence[Group], path: str | os.PathLike, key: str = "test_error", title: str | None = None,
                logy: bool = True) -> Path | None:
    """``key`` per epoch (default test error %, log axis), one line per group: mean over seeds, shaded ± std."""
    data = [(g, curves(g, key)) for g in groups]
    data = [(g, c) for g, c in data if c[0]]
    if not data:
        return None
    styles = _styles([g for g, _ in data])
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for g, (epochs, mean, std, n) in data:
        colour, ls, marker = styles[g.name]
        ax.plot(epochs, mean, color=colour, ls=ls, marker=marker, ms=3, label=f"{g.label} (n={n})")
        lo = [m - s for m, s in zip(mean, std)]
        if logy:
            lo = [max(v, m / 3) if m > 0 else v for v, m in zip(lo, mean)]
        ax.fill_between(epochs, lo, [m + s for m, s in zip(mean, std)], color=colour, alpha=0.15, linewidth=0)
    if logy:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " ") + (" %" if key in ("test_error", "test_acc") else "")
                  + (" (log scale)" if logy else ""))
    ax.set_title(title or f"{key.replace('_', ' ')} per epoch (mean over seeds, shaded ± std)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
