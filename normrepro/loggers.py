"""Experiment loggers. ``metrics.json`` is the source of truth; loggers mirror it elsewhere.

``logger=wandb`` logs the resolved config, every epoch row and the final summary to Weights & Biases,
one W&B run per training run (multirun jobs included), in offline mode when no credentials are set
(sync later with ``wandb sync <run dir>/wandb/offline-run-*``).
"""
from __future__ import annotations

import os
from pathlib import Path

from normrepro.errors import choice_error

LOGGERS = ("none", "wandb")


class NullLogger:
    """Logs nothing."""

    def log_epoch(self, row: dict) -> None:
        """Log one epoch's metrics row."""
        pass

    def log_final(self, final: dict) -> None:
        """Log the run's final summary."""
        pass

    def finish(self, status: str) -> None:
        """End the run with ``status`` (completed | diverged)."""
        pass


class WandbLogger(NullLogger):
    """One W&B run per training run: the resolved config, every epoch row, the final summary (offline without
    credentials)."""

    def __init__(self, cfg, resolved: dict, run_dir: Path):
        import wandb

        mode = cfg.get("mode") or os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if (os.environ.get("WANDB_API_KEY") or _has_netrc_key()) else "offline"
        self.run = wandb.init(project=cfg.get("project", "normrepro"), entity=cfg.get("entity"),
                              group=cfg.get("group"), name=cfg.get("name_run") or Path(run_dir).name,
                              tags=list(cfg.get("tags") or []), config=resolved, dir=str(run_dir), mode=mode,
                              reinit="finish_previous")
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, row: dict) -> None:
        """Log one epoch's metrics row (step metric: epoch)."""
        self.run.log(dict(row))

    def log_final(self, final: dict) -> None:
        """The final summary as ``final/<key>`` in the W&B summary."""
        for k, v in final.items():
            self.run.summary[f"final/{k}"] = v

    def finish(self, status: str) -> None:
        """Record ``status`` and finish the W&B run (exit code 1 unless completed)."""
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg, resolved: dict, run_dir, rank: int = 0):
    """The logger of config group ``logger`` (none | wandb); ranks other than 0 log nothing."""
    name = cfg.get("name", "none")
    if name not in LOGGERS:
        raise choice_error("logger", name, LOGGERS)
    if name == "none" or rank != 0:
        return NullLogger()
    return WandbLogger(cfg, resolved, Path(run_dir))
