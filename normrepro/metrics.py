"""``metrics.json``: per-epoch rows, the final summary and the run's environment, written atomically."""
from __future__ import annotations

import math
from pathlib import Path

from normrepro.utils.io import atomic_write_json


def summarize(history: list[dict]) -> dict:
    """final test_acc, best_test_acc, epochs_done, wall_seconds and training images/s of a history."""
    if not history:
        return {"test_acc": None, "best_test_acc": None, "epochs_done": 0, "wall_seconds": 0.0,
                "images_per_second": None}
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None and math.isfinite(r["test_acc"])]
    train_s = sum(r.get("train_seconds", r["seconds"]) for r in history)
    images = sum(r.get("train_images", 0) for r in history)
    return {"test_acc": history[-1]["test_acc"], "best_test_acc": max(accs) if accs else None,
            "epochs_done": history[-1]["epoch"], "wall_seconds": sum(r["seconds"] for r in history),
            "images_per_second": images / train_s if train_s > 0 else None}


class MetricsWriter:
    """Holds the history; ``write(status)`` rewrites ``metrics.json`` atomically and returns its content."""

    def __init__(self, path: str | Path, seed: int, overrides: list[str], env: dict, data: dict | None = None):
        self.path, self.seed, self.overrides, self.env, self.data = Path(path), seed, overrides, env, data or {}
        self.history: list[dict] = []

    def write(self, status: str) -> dict:
        out = {"status": status, "epochs": self.history, "final": summarize(self.history), "env": self.env,
               "data": self.data, "seed": self.seed, "overrides": self.overrides}
        atomic_write_json(self.path, out)
        return out
