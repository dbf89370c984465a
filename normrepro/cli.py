"""Entry point of ``normrepro-train`` and ``train.py``: check the config, lock the run dir, train, map failures to one
line and exit codes. :func:`train_entry` is the console script; :func:`hydra_main` the Hydra app (configs: the
packaged ``normrepro/conf``, so an installed wheel needs no checkout).

Exit codes: 0 completed; 2 bad input (``error: ...``: config value, unreadable or unsafe file, unusable run dir,
full disk; Hydra's own errors too); 3 diverged (``metrics.json``: status diverged, ``env.diverged`` the reason);
4 preempted (SIGTERM/SIGUSR2: a checkpoint after the current step, ``metrics.json`` status preempted; the same
command resumes it; a handler installed before, e.g. submitit's requeue, gets the signal instead); 1 a bug
(traceback). A run that dies after ``metrics.json`` was written leaves ``status: failed`` (or
``interrupted``) and ``error: <one-line reason>`` there, so a report tells a crash from a live run.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from normrepro.config_check import check_config
from normrepro.console import rounded
from normrepro.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, ConfigError, one_line
from normrepro.preemption import EXIT_PREEMPTED, Preempted
from normrepro.preflight import check_run_dir, exit_with_error, is_rank0, require_shared_run_dir
from normrepro.run_lock import acquire_run_lock, release_run_lock
from normrepro.utils.io import atomic_write_json, atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().with_name("conf")  # the packaged configs (a file path: editable or installed)
_STATUSES: list[str] = []  # status of every run this process trained (a multirun's jobs, in-process launchers)
_TASK_RAISED: list[BaseException] = []  # exceptions that escaped the training code (bugs: keep their traceback)


def run_dir_of(cfg: DictConfig) -> Path:
    """The Hydra run dir (under torchrun it must be given explicitly: ``require_shared_run_dir``)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    require_shared_run_dir(hc.mode.name, hc.overrides.hydra)
    return Path(hc.runtime.output_dir)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def main(cfg: DictConfig) -> float | None:
    """Train one run; returns its final validation accuracy when ``train.val_fraction`` > 0, else its final test
    accuracy (what Hydra sweepers, e.g. optuna, maximize). Bad input: ``error: ...``, exit 2."""
    try:
        run_dir = run_dir_of(cfg)
    except ConfigError as e:
        exit_with_error(e)
    try:
        result = run(cfg, run_dir)
    except Preempted as e:
        exit_preempted(e, run_dir, bool(cfg.train.resume))
    except ConfigError as e:
        if not _multirun():
            exit_with_error(e)
        log.error("error: %s", one_line(e))  # the sweep goes on; Hydra re-raises the first failure at its end
        raise
    if "final" not in result:  # not rank 0 under torchrun
        return None
    final, status = result["final"], result["status"]
    why = f" ({result['env']['diverged']})" if status == "diverged" and "diverged" in result.get("env", {}) else ""
    val = f"val_acc {rounded(final['val_acc'])} " if "val_acc" in final else ""
    ema = f"ema_test_acc {rounded(final['ema_test_acc'])} " if "ema_test_acc" in final else ""
    print(f"{status}{why}: test_acc {rounded(final['test_acc'])} {val}{ema}best {rounded(final['best_test_acc'])} "
          f"after {final['epochs_done']} epochs -> {run_dir / 'metrics.json'}")
    return final["val_acc"] if float(cfg.train.get("val_fraction") or 0) > 0 else final["test_acc"]


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Check ``cfg``, lock ``run_dir`` (rank 0), clean temp files a kill left there, write ``config.yaml`` and call
    ``trainer.fit``; a failure after training started is recorded in ``metrics.json`` before it propagates."""
    from normrepro.trainer import fit

    check_config(cfg)
    if is_rank0():
        check_run_dir(run_dir)  # Hydra made it already; a direct caller may not have
        acquire_run_lock(run_dir)
        remove_stale_temp_files(run_dir)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    else:
        drop_file_logging()
    try:
        result = fit(cfg, run_dir)
    except Preempted:
        raise  # metrics.json says preempted already; main() forwards the signal or exits 4
    except ConfigError as e:
        mark_failed(run_dir / "metrics.json", one_line(e))
        raise
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        mark_failed(run_dir / "metrics.json", f"{type(e).__name__}: {one_line(e)}",
                    "interrupted" if interrupted else "failed")
        _TASK_RAISED.append(e)
        raise
    finally:
        release_run_lock(run_dir)  # a multirun's next in-process job locks its own dir; the OS would at exit
    _STATUSES.append(result["status"])
    return result


def exit_preempted(e: Preempted, run_dir: Path, resume: bool) -> None:
    """One line on stderr saying how to resume; then the signal's previous handler (submitit: checkpoint and
    requeue) if there was one, else (or when it returns) exit :data:`EXIT_PREEMPTED`."""
    if is_rank0():
        how = "run the same command again" + ("" if resume else " with train.resume=true")
        print(f"preempted: {e} ({run_dir / 'last.ckpt'}); {how} to resume", file=sys.stderr, flush=True)
    e.forward()
    sys.exit(EXIT_PREEMPTED)


def mark_failed(metrics_path: Path, reason: str, status: str = "failed") -> bool:
    """Rewrite ``metrics.json`` (rank 0, only while it says ``running``) as ``status`` with ``error: reason``."""
    if not is_rank0() or not metrics_path.is_file():
        return False
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(metrics, dict) or metrics.get("status") != "running":
        return False
    metrics.update(status=status, error=reason)
    try:
        atomic_write_json(metrics_path, metrics)
    except ConfigError:  # the disk that failed the run may fail this write too: the original error matters more
        return False
    return True


def drop_file_logging() -> None:
    """Remove the root logger's file handlers (Hydra's ``train.log``): under torchrun rank 0 alone writes it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()


def hydra_error_line(e: BaseException) -> str | None:
    """One line for Hydra's own errors (unknown group option, bad override, unknown key); None for others."""
    import re

    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        options = [o for o in e.options if not o.startswith("_")]  # _-prefixed files are bases, not options
        return (f"no config {e.missing_cfg_file}: unknown {group} option {option!r}; choose {group}= one of: "
                f"{', '.join(options)}")
    if isinstance(e, MissingConfigException):  # e.g. --config-name of no file: its first line, not the search path
        return one_line(e)
    if isinstance(e, OverrideParseException):
        detail = "; ".join(ln.strip() for ln in str(e.message).splitlines() if ln.strip() and "hydra.cc" not in ln)
        return f"cannot parse override {e.override!r}: {detail} (Hydra's override grammar)"
    if not isinstance(e, (HydraException, OmegaConfBaseException)):
        return None
    text = str(e)
    m = re.match(r"Could not override '([^']+)'", text)
    if m and "To append to your config use +" in text:
        return (f"unknown config key {m.group(1)!r} (nothing to override; '+key=value' adds a key, which only "
                f"free-form sections such as experiment accept)")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("full_key:", "object_type=", "Set the environment"))]
    return "; ".join(lines) or type(e).__name__


def entry(hydra_main) -> None:
    """Run the ``@hydra.main`` function ``hydra_main`` with Hydra's errors as one ``error:`` line (exit 2) and a
    diverged run as exit code 3 (a multirun: any of its in-process jobs)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing several lines; we print one
    try:
        hydra_main()
    except Exception as e:  # noqa: BLE001 - sorted below: user errors become one line, bugs keep the traceback
        if any(e is t for t in _TASK_RAISED):
            raise
        line = one_line(e) if isinstance(e, ConfigError) else hydra_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    if "diverged" in _STATUSES:
        sys.exit(EXIT_DIVERGED)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra app: ``normrepro-train norm=l1 precision=fp16`` (``--help`` lists the groups)."""
    return main(cfg)


def train_entry() -> None:
    """Console script ``normrepro-train`` (and ``python train.py``)."""
    entry(hydra_main)
