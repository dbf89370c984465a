"""Checkpoints: ``last.ckpt`` written atomically every epoch (and mid-epoch on a preemption signal or every
``train.checkpoint_every_steps`` steps); a run dir holding one resumes from it.

A checkpoint holds tensors and plain containers only, so it loads with ``torch.load(weights_only=True)``: the RNG
states are stored as tensors, ints and lists (numpy's MT19937 as its key tensor + ints, Python's as a list of ints).
:func:`load_checkpoint` refuses a file naming any other object (nothing from it runs) and checks the structure
(:func:`checkpoint_problem`), so a damaged file is one error line, not a traceback halfway through resuming.
"""
from __future__ import annotations

import random
from numbers import Real
from pathlib import Path

import numpy as np
import torch

from normrepro.channel_norms import reference_problem
from normrepro.errors import ConfigError
from normrepro.safe_load import safe_torch_load
from normrepro.utils.io import atomic_torch_save

CKPT_NAME = "last.ckpt"
REQUIRED = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int, "history": list,
            "rng": dict, "config": dict}
_HINT = "delete it or set train.resume=false"


def rng_state() -> dict:
    """The torch, numpy, python (and CUDA) RNG states as tensors, ints and lists (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a kill mid-write leaves the previous checkpoint intact)."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load and check a checkpoint; an unreadable, unsafe or damaged file raises a one-line ConfigError."""
    state = safe_torch_load(path, "checkpoint", _HINT)
    problem = checkpoint_problem(state)
    if problem:
        raise ConfigError(f"damaged checkpoint {str(path)!r}: {problem}; {_HINT}")
    return state


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rng_problem(rng: dict) -> str | None:
    t, n, p = rng.get("torch"), rng.get("numpy"), rng.get("python")
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
        return "rng.torch is not a uint8 tensor"
    if not (isinstance(n, dict) and n.get("kind") == "MT19937" and isinstance(n.get("keys"), torch.Tensor)
            and n["keys"].numel() == 624 and all(_is_int(n.get(k)) for k in ("pos", "has_gauss"))
            and isinstance(n.get("cached_gaussian"), Real)):
        return "rng.numpy is not an MT19937 state (kind, keys[624], pos, has_gauss, cached_gaussian)"
    if not (isinstance(p, dict) and _is_int(p.get("version")) and isinstance(p.get("state"), (list, tuple))
            and len(p["state"]) == 625 and all(_is_int(v) for v in p["state"])
            and (p.get("gauss_next") is None or isinstance(p.get("gauss_next"), Real))):
        return "rng.python is not a Mersenne Twister state (version, state[625], gauss_next)"
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, (list, tuple)) and all(isinstance(c, torch.Tensor) for c in cuda)):
        return "rng.cuda is not a list of tensors"
    return None


def checkpoint_problem(state) -> str | None:
    """What is wrong with a loaded checkpoint's structure (missing or wrong-typed entries), or None."""
    if not isinstance(state, dict):
        return f"expected a dict, found {type(state).__name__}"
    for key, kind in REQUIRED.items():
        if key not in state:
            return f"no {key!r} entry (expected keys {', '.join(REQUIRED)})"
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            return f"{key!r} is a {type(state[key]).__name__}, expected a {kind.__name__}"
    if state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        return f"epoch {state['epoch']} but {len(state['history'])} history rows"
    if not all(isinstance(r, dict) and r.get("epoch") == i + 1 for i, r in enumerate(state["history"])):
        return "history rows are not epochs 1, 2, ... in order"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        return "model is not a dict of tensors"
    if not (isinstance(state["optimizer"].get("state"), dict)
            and isinstance(state["optimizer"].get("param_groups"), list)):
        return "optimizer has no state/param_groups"
    if not _is_int(state["scheduler"].get("last_epoch")):
        return "scheduler has no integer last_epoch"
    ema = state.get("ema")
    if ema is not None and not (isinstance(ema, dict) and all(isinstance(v, torch.Tensor) for v in ema.values())):
        return "ema is not a dict of tensors"
    if state.get("weight_norms") is not None:
        problem = reference_problem(state["weight_norms"])
        if problem:
            return f"weight_norms: {problem}"
    if state.get("steps_per_epoch") is not None and not (_is_int(state["steps_per_epoch"])
                                                         and state["steps_per_epoch"] > 0):
        return f"steps_per_epoch is {state['steps_per_epoch']!r}, expected an integer > 0"
    if state.get("progress") is not None:
        problem = _progress_problem(state["progress"], state["epoch"])
        if problem:
            return f"progress: {problem}"
    return _rng_problem(state["rng"])


def _sums_ok(sums) -> bool:
    return (isinstance(sums, dict) and all(isinstance(sums.get(k), torch.Tensor) and sums[k].dim() == 0
                                           for k in ("loss", "correct", "finite_images"))
            and _is_int(sums.get("images")))


def _progress_problem(p, epoch: int) -> str | None:
    """What is wrong with a mid-epoch checkpoint's ``progress`` (``EpochProgress.state``), or None."""
    if not isinstance(p, dict):
        return f"a {type(p).__name__}, expected a dict"
    ints, reals = ("epoch", "step", "skipped_before", "reference_step"), ("lr", "train_seconds")
    if not (all(_is_int(p.get(k)) and p[k] >= 0 for k in ints) and all(isinstance(p.get(k), Real) for k in reals)):
        return f"expected ints >= 0 {', '.join(ints)} and numbers {', '.join(reals)}"
    if p["epoch"] != epoch:
        return f"epoch {p['epoch']} in progress after {epoch} epochs done"
    max_dev, rank_sums = p.get("max_dev"), p.get("rank_sums", [])
    if not isinstance(rank_sums, list) or not all(_sums_ok(s) for s in [p.get("sums"), *rank_sums]):
        return "sums (and rank_sums) is not {loss, correct, finite_images: 0-dim tensors, images: int}"
    if not (isinstance(max_dev, dict) and all(isinstance(v, torch.Tensor) for v in max_dev.values())):
        return "max_dev is not a dict of tensors"
    return None
