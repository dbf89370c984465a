"""What a run prints: the start summary (parameter count, key settings), the training bar's loss/lr postfix (refreshed
every :data:`POSTFIX_EVERY` steps: one host sync then, none per step), the evaluation bar, rounded numbers."""
from __future__ import annotations

import logging

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
POSTFIX_EVERY = 20  # training steps between two refreshes of the bar's loss/lr (each refresh syncs the device)


def key_settings(cfg) -> str:
    """The resolved settings a reader checks first, as ``key=value`` pairs."""
    tc, optim = cfg.train, cfg.optim
    pairs = {"norm": cfg.norm.name, "model": cfg.model.name, "dataset": cfg.dataset.name,
             "precision": cfg.precision.name, "lr": optim.lr, "wd": optim.weight_decay, "epochs": tc.epochs,
             "batch": tc.batch_size, "seed": cfg.seed}
    if tc.get("val_fraction"):
        pairs["val_fraction"] = tc.val_fraction
    if tc.get("ema_decay"):
        pairs["ema_decay"] = tc.ema_decay
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def log_start(cfg, model, data, device) -> None:
    """Log the model's parameter count, the data sizes and the key settings at the start of a run."""
    params = sum(p.numel() for p in model.parameters())
    val = f", {data.num_val} val" if data.num_val else ""
    log.info("%s: %s parameters (%.2f M) | %s: %d train%s, %d test | %s", cfg.model.name, f"{params:,}", params / 1e6,
             data.name, data.num_train, val, data.num_test, device)
    log.info("settings: %s", key_settings(cfg))


def set_train_postfix(bar, step: int, sums, lr: float) -> None:
    """Every :data:`POSTFIX_EVERY` steps, show the epoch's mean training loss so far and the lr on ``bar``."""
    if bar.disable or step == 0 or step % POSTFIX_EVERY:
        return
    images = max(int(sums.images), 1)
    bar.set_postfix(loss=f"{float(sums.loss) / images:.4f}", lr=f"{lr:.4g}", refresh=False)


def eval_bar(loader, total: int, enabled: bool, desc: str = "eval"):
    """``loader`` behind a transient tqdm bar of ``total`` batches (disabled unless ``enabled``)."""
    return tqdm(loader, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def extra_accuracies(row: dict) -> str:
    """`` | val acc 91.20% | ema test acc 92.05%``: the row's validation and EMA accuracies, if any."""
    keys = {"val_acc": "val", "ema_test_acc": "ema test", "ema_val_acc": "ema val"}
    return "".join(f" | {label} acc {row[k]:.2f}%" for k, label in keys.items() if k in row)


def rounded(value, digits: int = 2):
    """``value`` rounded to ``digits`` decimals (None and non-numbers as they are)."""
    return round(value, digits) if isinstance(value, float) else value
