"""The best epoch: ``best.ckpt`` beside ``last.ckpt``, selected by validation accuracy when ``train.val_fraction`` > 0,
else by test accuracy; ``metrics.json`` records the best epoch and metric (``final.best_epoch``, ...)."""
from __future__ import annotations

import math

BEST_NAME = "best.ckpt"


def selection_metric(cfg) -> str:
    """``val_acc`` when a validation split is configured, else ``test_acc``."""
    return "val_acc" if float(cfg.train.get("val_fraction") or 0) > 0 else "test_acc"


def _value(row: dict, key: str) -> float | None:
    v = row.get(key)
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def best_of(history: list[dict], key: str) -> dict:
    """``best_metric`` (the key), ``best_epoch`` and ``best_value`` of ``history`` (the first epoch of a tie)."""
    best = None
    for row in history:
        v = _value(row, key)
        if v is not None and (best is None or v > best[1]):
            best = (row["epoch"], v)
    return {"best_metric": key, "best_epoch": best[0] if best else None, "best_value": best[1] if best else None}


def is_new_best(history: list[dict], key: str) -> bool:
    """Whether the last row of ``history`` is its best one by ``key`` (strictly better than every earlier row)."""
    return bool(history) and best_of(history, key)["best_epoch"] == history[-1]["epoch"] and \
        _value(history[-1], key) is not None
