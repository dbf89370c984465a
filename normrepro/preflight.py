"""Checks that run before Hydra writes anything: a Hydra callback (``hydra.callbacks.preflight`` in config.yaml).

RUN mode (``on_run_start``, before Hydra creates the run dir, writes ``.hydra/`` or opens ``train.log``): the config
against the schema (``config_check``), the run dir (creatable, a folder, writable: not a file, not under /proc, not
read-only) and the run lock (rank 0; a second process in the same run dir stops here).
MULTIRUN (``on_multirun_start``): the sweep dir, and every job's config of a basic-sweeper sweep (up to
``MAX_SWEEP_CHECKS`` jobs; each job checks its own config again when it starts).
A problem is one ``error: ...`` line on stderr and exit code 2 (:data:`normrepro.errors.EXIT_BAD_INPUT`): the
callback exits itself, since Hydra turns any exception a callback raises into a warning and goes on. ``cli.run``
checks the config, the run dir and the lock again when the job starts (other launchers, direct callers).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from normrepro.config_check import check_config
from normrepro.errors import EXIT_BAD_INPUT, ConfigError
from normrepro.run_lock import acquire_run_lock

MAX_SWEEP_CHECKS = 256


def exit_with_error(message) -> None:
    """Print ``error: <message>`` (one line) on stderr and exit with code 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


def check_run_dir(path: str | os.PathLike, key: str = "hydra.run.dir") -> Path:
    """Create ``path`` if needed and prove it writable (a probe file); else a one-line ConfigError naming ``key``."""
    if not str(path).strip():
        raise ConfigError(f"{key} must be a folder path, got {str(path)!r} (that would write into the current folder)")
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{key}={str(path)!r}: {str(part)!r} is not a folder; use another {key}")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot create or write {key}={str(path)!r} ({e.strerror or type(e).__name__}); "
                          f"use another {key}") from None
    return p


def require_shared_run_dir(run_mode: str, hydra_overrides) -> None:
    """Under torchrun every rank must see the same run dir, so it must be given explicitly (the default contains
    the start time, which can differ between ranks by a second)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and run_mode == "RUN" and not any(
            str(o).split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hydra_overrides):
        raise ConfigError("under torchrun pass hydra.run.dir=<dir> so that all ranks share one run dir")


def is_rank0() -> bool:
    """Rank 0 under torchrun (or no torchrun at all)."""
    return os.environ.get("RANK", "0") == "0"


def task_config(config):
    """The task part of a composed config (no ``hydra`` node), with ``${hydra:...}`` resolvable."""
    HydraConfig.instance().set_config(config)  # run_job sets it again
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def sweep_jobs(config) -> list[list[str]] | None:
    """Every job's overrides of a basic-sweeper sweep (config params, then the command line), or None."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    return BasicSweeper.split_arguments(parsed, None)[0]


class Preflight(Callback):
    """Hydra callback: config, run dir and lock checked before Hydra writes anything (see the module docstring)."""

    def on_run_start(self, config, **kwargs) -> None:
        """RUN: the config, the run dir, the run lock (rank 0)."""
        try:
            check_config(task_config(config))
            require_shared_run_dir("RUN", config.hydra.overrides.hydra)
            run_dir = check_run_dir(str(config.hydra.run.dir))
            if is_rank0():
                acquire_run_lock(run_dir)
        except ConfigError as e:
            exit_with_error(e)

    def on_multirun_start(self, config, **kwargs) -> None:
        """MULTIRUN: the sweep dir, then every job's config (a composition error is left to Hydra's sweeper,
        which reports it before launching anything)."""
        from hydra import compose

        try:
            check_run_dir(str(config.hydra.sweep.dir), "hydra.sweep.dir")
            try:
                jobs = sweep_jobs(config) or []
            except Exception:  # noqa: BLE001 - a bad sweep override: Hydra's sweeper reports it
                return
            for overrides in jobs[:MAX_SWEEP_CHECKS]:
                try:
                    cfg = compose(config_name=config.hydra.job.config_name, overrides=overrides)
                except Exception:  # noqa: BLE001 - unknown option, bad key: Hydra's sweeper reports it
                    return
                try:
                    check_config(cfg)
                except ConfigError as e:
                    raise ConfigError(f"sweep job {' '.join(overrides)}: {e}") from None
        except ConfigError as e:
            exit_with_error(e)
