"""Checkpoints: ``last.ckpt`` written atomically every epoch; a run dir holding one resumes from it."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from normrepro.errors import ConfigError
from normrepro.utils.io import atomic_torch_save

CKPT_NAME = "last.ckpt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint; a file torch cannot read raises a one-line ConfigError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"corrupt checkpoint {str(path)!r} ({type(e).__name__}); delete it or set "
                          f"train.resume=false") from None
    required = ("model", "optimizer", "epoch", "history")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ConfigError(f"corrupt checkpoint {str(path)!r}: expected keys {', '.join(required)}; "
                          f"delete it or set train.resume=false")
    return state
