"""A simulated crash after an epoch's checkpoint, and the resume that follows (the exact-resume tests)."""
from __future__ import annotations

import pytest

from normrepro import trainer
from normrepro.trainer import fit


def crash_after(monkeypatch, epoch: int):
    """Make fit raise KeyboardInterrupt right after it wrote last.ckpt of ``epoch``; returns the undo."""
    real_save = trainer.save_checkpoint

    def save(path, state):
        real_save(path, state)
        if state["epoch"] == epoch and path.name == "last.ckpt":
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    return lambda: monkeypatch.setattr(trainer, "save_checkpoint", real_save)


def crash_then_resume(cfg, run_dir, monkeypatch, epochs_before_crash: int) -> dict:
    """Train ``cfg`` until a crash after ``epochs_before_crash`` checkpoints, then resume it to the end."""
    undo = crash_after(monkeypatch, epochs_before_crash)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, run_dir)
    undo()
    return fit(cfg, run_dir)
