"""At the end of a multirun (``hydra.callbacks.sweep_summary``): mean ± std of the jobs' final accuracies per group.

A group is a job's overrides minus ``seed=...``: ``-m norm=l1,l2 seed=0,1,2`` gives two groups of three runs. Read
from each job's ``metrics.json`` (completed runs; the others are counted as not completed), printed as a table and
written to ``<sweep dir>/summary.json``. ``python -m normrepro.report`` makes the full report with CIs and tests.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from hydra.experimental.callback import Callback

from normrepro.utils.io import atomic_write_json

METRICS = ("test_acc", "val_acc", "ema_test_acc")


def group_of(overrides: list[str]) -> str:
    """The group of a job: its overrides without ``seed=...``, sorted and joined (``(defaults)`` when none)."""
    rest = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")
    return " ".join(rest) or "(defaults)"


def _mean_std(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def summarize_sweep(sweep_dir: Path) -> dict:
    """{group: {"runs": n, "completed": n, metric: {n, mean, std}, ...}} over ``sweep_dir/*/metrics.json``."""
    groups: dict[str, dict] = {}
    for path in sorted(Path(sweep_dir).glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        g = groups.setdefault(group_of(list(m.get("overrides") or [])), {"runs": 0, "values": {}})
        g["runs"] += 1
        if m.get("status") != "completed":
            continue
        for key in METRICS:
            v = (m.get("final") or {}).get(key)
            if isinstance(v, (int, float)):
                g["values"].setdefault(key, []).append(float(v))
    return {name: {"runs": g["runs"], "completed": len(g["values"].get("test_acc", [])),
                   **{k: _mean_std(v) for k, v in g["values"].items()}} for name, g in groups.items()}


def format_summary(summary: dict) -> str:
    """The summary as lines ``group  n=3/3  test_acc 91.23 ± 0.41  val_acc ...`` (2 decimals)."""
    lines = []
    for name, g in summary.items():
        parts = [f"{name}", f"n={g['completed']}/{g['runs']}"]
        for key in METRICS:
            if key in g:
                s = g[key]
                parts.append(f"{key} {s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else ""))
        lines.append("  ".join(parts))
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback: log the per-group summary of the sweep and write ``<sweep dir>/summary.json``."""

    def on_multirun_end(self, config, **kwargs) -> None:
        """After the last job: summarize ``hydra.sweep.dir``."""
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize_sweep(sweep_dir)
        if not summary:
            return
        atomic_write_json(sweep_dir / "summary.json", summary)
        print(f"sweep summary (mean ± std over seeds) -> {sweep_dir / 'summary.json'}:\n{format_summary(summary)}",
              flush=True)
