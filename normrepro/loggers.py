"""Experiment loggers (config group ``logger``). ``metrics.json`` is the source of truth; loggers mirror it elsewhere.

- ``logger=csv``: ``<run dir>/metrics.csv``, one row per epoch, rewritten atomically from the history after each
  epoch (a resumed run's file holds exactly the checkpoint's epochs, then the new ones).
- ``logger=tensorboard``: scalars per epoch under ``<run dir>/tensorboard`` (``torch.utils.tensorboard``; the
  ``tensorboard`` package: ``pip install 'normrepro[tensorboard]'``); a resumed run purges events after its epoch.
- ``logger=wandb``: the resolved config, every epoch row and the final summary to Weights & Biases, one W&B run per
  training run across resumes (its id kept in ``<run dir>/wandb_run_id.txt``, ``resume="allow"``); multirun jobs
  named from their overrides and grouped by sweep dir; offline when no credentials are set (sync later with
  ``wandb sync <run dir>/wandb/offline-run-*``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import uuid
from pathlib import Path

from normrepro.errors import ConfigError, choice_error
from normrepro.utils.io import atomic_write_text

LOGGERS = ("none", "csv", "tensorboard", "wandb")
CSV_NAME = "metrics.csv"
WANDB_ID_NAME = "wandb_run_id.txt"


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


class CsvLogger(NullLogger):
    """``<run dir>/metrics.csv``: the history's rows (columns: every key any row has, in first-seen order)."""

    def __init__(self, run_dir: Path, history: list[dict]):
        self.path, self.rows = Path(run_dir) / CSV_NAME, [flat_row(r) for r in history]

    def log_epoch(self, row: dict) -> None:
        """Append ``row`` (a nested dict such as ``weight_norm`` as columns ``weight_norm/<layer>``), rewrite."""
        self.rows.append(flat_row(row))
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def flat_row(row: dict, prefix: str = "") -> dict:
    """``row`` with nested dicts flattened into ``key/subkey`` entries."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(flat_row(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _scalars(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardLogger(NullLogger):
    """Every numeric column of a row as a scalar at step ``epoch``; the final summary as ``final/<key>``."""

    def __init__(self, cfg, run_dir: Path, history: list[dict]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'normrepro[tensorboard]' "
                              "(or pip install tensorboard), or use logger=csv") from None
        done = len(history)
        self.writer = SummaryWriter(str(Path(run_dir) / cfg.get("log_dir", "tensorboard")),
                                    purge_step=done + 1 if done else None)
        self.epoch = done

    def log_epoch(self, row: dict) -> None:
        """The row's numeric columns at step ``row["epoch"]``."""
        self.epoch = int(row["epoch"])
        for k, v in _scalars(flat_row(row)).items():
            if k != "epoch":
                self.writer.add_scalar(k, v, self.epoch)
        self.writer.flush()

    def log_final(self, final: dict) -> None:
        """The final summary's numbers as ``final/<key>`` at the last epoch."""
        for k, v in _scalars(final).items():
            self.writer.add_scalar(f"final/{k}", v, self.epoch)

    def finish(self, status: str) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandbLogger(NullLogger):
    """One W&B run per training run, resumed with the run dir: the resolved config, every epoch row, the final
    summary (offline without credentials)."""

    def __init__(self, cfg, resolved: dict, run_dir: Path):
        import wandb

        mode = cfg.get("mode") or os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if (os.environ.get("WANDB_API_KEY") or _has_netrc_key()) else "offline"
        job_name, sweep_group = _hydra_job_names()
        self.run = wandb.init(project=cfg.get("project", "normrepro"), entity=cfg.get("entity"),
                              group=cfg.get("group") or sweep_group,
                              name=cfg.get("name_run") or job_name or Path(run_dir).name,
                              tags=list(cfg.get("tags") or []), config=resolved, dir=str(run_dir), mode=mode,
                              id=wandb_run_id(run_dir), resume="allow",
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


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: the one in ``wandb_run_id.txt``, else a new random one written there."""
    path = Path(run_dir) / WANDB_ID_NAME
    if path.is_file():
        saved = path.read_text().strip()
        if saved:
            return saved
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(path, run_id + "\n")
    return run_id


def _hydra_job_names() -> tuple[str | None, str | None]:
    """(the job's overrides as a name, its sweep dir as a group) in a Hydra multirun; (None, None) otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hc.mode.name != "MULTIRUN":
        return None, None
    return hc.job.override_dirname or f"job{hc.job.num}", str(hc.sweep.dir)


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg, resolved: dict, run_dir, rank: int = 0, history: list[dict] | None = None):
    """The logger of config group ``logger`` (none | csv | tensorboard | wandb) for a run that has ``history``
    (its resumed rows) already; ranks other than 0 log nothing."""
    name = cfg.get("name", "none")
    if name not in LOGGERS:
        raise choice_error("logger", name, LOGGERS)
    if name == "none" or rank != 0:
        return NullLogger()
    if name == "csv":
        return CsvLogger(Path(run_dir), list(history or []))
    if name == "tensorboard":
        return TensorBoardLogger(cfg, Path(run_dir), list(history or []))
    return WandbLogger(cfg, resolved, Path(run_dir))
