"""What a checkpoint holds of a run, and putting it back (``normrepro/checkpoint.py`` reads and writes the file).

``state_of(run)``: model, optimizer, scheduler and loss-scaler states, the epochs done, the metrics history, every
RNG state, the resolved config, the recorded weight norms, the EMA of the weights (``train.ema_decay``) and, saved
halfway through an epoch, that epoch's progress (``normrepro/epoch_progress.py``). ``restore(run, state)`` loads them
into a freshly built run, so that the resumed run continues exactly (bit-identically) where the checkpoint was written.
"""
from __future__ import annotations

import logging

from normrepro.checkpoint import rng_state, set_rng_state
from normrepro.errors import ConfigError
from normrepro.resume_check import check_resume_config

log = logging.getLogger(__name__)


def state_of(run) -> dict:
    """The checkpoint contents of ``run`` (a :class:`normrepro.trainer.Run`) after ``run.epochs_done`` epochs."""
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "epoch": run.epochs_done,
            "history": run.metrics.history, "rng": rng_state(), "config": run.resolved,
            "weight_norms": run.recorder.state(), "steps_per_epoch": run.steps_per_epoch,
            "progress": None if run.progress is None else run.progress.state(run.optimizer),
            **({"ema": run.ema.state_dict()} if run.ema is not None else {})}


def restore(run, state: dict, source: str = "checkpoint") -> None:
    """Load ``state`` (from :func:`state_of`) into ``run``; a checkpoint of another config is a ConfigError that
    names the keys that differ (``normrepro.resume_check``)."""
    check_resume_config(state, run.resolved, source)
    step = (state.get("progress") or {}).get("step", 0)
    if step > run.steps_per_epoch:
        raise ConfigError(f"checkpoint {source!r} stopped at batch {step} of an epoch, but this run's epochs have "
                          f"{run.steps_per_epoch} batches (another dataset?); use another hydra.run.dir or "
                          f"train.resume=false")
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {source!r} does not match this config ({first}); "
                          f"use another hydra.run.dir or train.resume=false") from None
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run.metrics.history = state["history"]
    if "weight_norms" in state:
        run.recorder.load_state(state["weight_norms"])
    run.epochs_done = int(state["epoch"])
    run.resume_progress = state.get("progress")  # a mid-epoch checkpoint: the epoch continues at its batch
    if run.resume_progress is None:
        log.info("resumed from %s at epoch %d", source, run.epochs_done)
    else:
        log.info("resumed from %s in epoch %d at batch %d", source, run.epochs_done + 1, run.resume_progress["step"])
