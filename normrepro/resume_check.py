"""Resuming is only exact with the config the checkpoint was trained with: ``check_resume_config`` compares them.

Any difference in a key that changes training stops the run with one line naming the keys and the two ways out
(``train.resume=false`` to start afresh there, or another ``hydra.run.dir``). :data:`RUNTIME_KEYS` (one place) lists
the keys that may differ: where and how fast the run goes, what it logs, where its data and metadata live.
``train.epochs`` may grow or shrink when the learning rate of every step already done is the same under both configs
(a constant schedule, or milestones in absolute epochs not yet reached): the resumed run then is exactly a fresh
run of the new config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from normrepro.errors import ConfigError

# keys (and whole sections) whose value does not change the trained weights or the metrics' definition
RUNTIME_KEYS = (
    "device", "deterministic", "hydra", "logger", "experiment",
    "train.num_threads", "train.progress", "train.resume", "train.checkpoint", "train.checkpoint_every_steps",
    "train.compile", "train.channels_last", "train.eval_batch_size", "train.max_eval_batches", "train.profile",
    "dataset.root", "dataset.download", "dataset.num_workers",
)
_ABSENT = "<absent>"
# keys added after checkpoints were written: absent from an older checkpoint's config means this value
ADDED_KEY_DEFAULTS = {"train.val_fraction": 0.0, "train.ema_decay": None, "train.overfit_batches": None}


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.epochs": 3, "optim.schedule.milestones": [0.5, 0.75], ...}``: dicts flattened, lists kept whole."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def is_runtime_key(key: str) -> bool:
    """Whether ``key`` (dotted) is or lies below one of :data:`RUNTIME_KEYS`."""
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every training key whose value differs (absent counts)."""
    a, b = flatten(saved), flatten(current)
    a.update({k: v for k, v in ADDED_KEY_DEFAULTS.items() if k not in a})
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if not is_runtime_key(k) and a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def same_past_schedule(saved: dict, current: dict, steps_done: int, steps_per_epoch: int) -> bool:
    """Whether the LR multiplier of every step 0..steps_done is identical under both configs."""
    from normrepro.optim.schedules import lr_factor

    old, new = dict(saved["optim"].get("schedule") or {}), dict(current["optim"].get("schedule") or {})
    old_epochs, new_epochs = int(saved["train"]["epochs"]), int(current["train"]["epochs"])
    return all(lr_factor(s / steps_per_epoch, old, old_epochs) == lr_factor(s / steps_per_epoch, new, new_epochs)
               for s in range(steps_done + 1))


def check_resume_config(state: dict, current: dict, path: str | Path) -> None:
    """Raise a one-line ConfigError when checkpoint ``state`` (its ``config``) was trained with another config."""
    diffs = config_differences(state["config"], current)
    steps_done = int(state["scheduler"]["last_epoch"])
    if [k for k, _, _ in diffs] == ["train.epochs"] and steps_done > 0:
        # older checkpoints lack steps_per_epoch: they were all written at an epoch's end
        per_epoch = int(state.get("steps_per_epoch") or steps_done // max(state["epoch"], 1))
        if per_epoch > 0 and same_past_schedule(state["config"], current, steps_done, per_epoch):
            return
    if diffs:
        shown = ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise ConfigError(f"{str(path)!r} was trained with another config ({shown}{more}); resuming would mix "
                          f"both: rerun with its config, or start afresh there with train.resume=false, or use "
                          f"another hydra.run.dir")


def _show(value: Any) -> str:
    text = value if value == _ABSENT else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
