"""The epoch in progress: its position, partial sums and row columns, and the mid-epoch checkpoints that hold them.

After an optimizer step the loop calls :func:`end_of_step`: every ``train.checkpoint_every_steps`` steps, and when a
preemption signal arrived (SIGTERM, SIGUSR2: ``normrepro/preemption.py``), it saves ``last.ckpt`` halfway through the
epoch. Besides the model, optimizer, scaler, scheduler and RNG states (``run_state.state_of``), that checkpoint holds
the epoch's :class:`EpochProgress`: the batches done (the data position), the row's learning rate (read at the
epoch's start), the training sums and max |x - mu| so far, the loss scaler's skipped steps before the epoch and the
reference interpolation's step. A resumed run starts the epoch's data plan at that batch and continues the sums, so
its metrics equal an uninterrupted run's (the timing columns aside).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from normrepro.checkpoint import CKPT_NAME, save_checkpoint
from normrepro.metrics import EpochSums
from normrepro.norms.max_dev import MaxDevTracker
from normrepro.optim.regularization import apply_wd_zero_epoch
from normrepro.precision import scaler_stats
from normrepro.preemption import Preempted
from normrepro.run_state import state_of

log = logging.getLogger(__name__)


@dataclass
class EpochProgress:
    """Epoch ``epoch`` after ``step`` of its batches: the row's ``lr``, the training sums, the max-dev maxima."""
    epoch: int
    step: int
    lr: float
    sums: EpochSums
    max_dev: MaxDevTracker
    skipped_before: int  # the loss scaler's skipped steps before this epoch
    seconds_before: float = 0.0  # training seconds of this epoch before a resume
    reference_step: int = 0  # the reference interpolation's step at a resume (lr_correction / norm_schedule)
    t0: float = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one step's (detached) loss, logits and labels, and the norm layers' max |x - mu|."""
        self.sums.add(loss, logits, y)
        self.max_dev.update()

    def train_seconds(self) -> float:
        """Seconds this epoch has trained so far (before a resume too)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def state(self, optimizer) -> dict:
        """What a mid-epoch checkpoint holds of this epoch (tensors, ints, floats: ``weights_only``-loadable)."""
        return {"epoch": self.epoch, "step": self.step, "lr": float(self.lr), "sums": self.sums.state(),
                "max_dev": self.max_dev.state(), "skipped_before": self.skipped_before,
                "train_seconds": self.train_seconds(), "reference_step": int(getattr(optimizer, "step_in_epoch", 0))}


def begin_epoch(run, epoch: int) -> EpochProgress:
    """Start (or, after a mid-epoch checkpoint, continue) epoch ``epoch``: the loader at its batch, this epoch's
    reference targets and weight decay, the sums so far."""
    saved = run.resume_progress if run.resume_progress and run.resume_progress["epoch"] == epoch else None
    run.resume_progress = None
    opt, start = run.optimizer, saved["step"] if saved else 0
    run.data.train.set_epoch(epoch, start)
    if run.reference is not None:  # lr_correction / norm_schedule: this epoch's reference norms
        run.reference.apply(opt, epoch, saved["reference_step"] if saved else 0)
    apply_wd_zero_epoch(opt, run.cfg.optim.get("wd_zero_epoch"), epoch, int(run.cfg.train.epochs))  # recipe=authors
    run.max_dev.start_epoch()
    progress = EpochProgress(epoch, start, opt.param_groups[0]["lr"], EpochSums(run.device), run.max_dev,
                             scaler_stats(run.scaler)["skipped_steps"])
    if saved:
        progress.lr, progress.skipped_before = saved["lr"], saved["skipped_before"]
        progress.seconds_before, progress.reference_step = saved["train_seconds"], saved["reference_step"]
        progress.sums.load_state(_own_sums(saved, run.dist))
        run.max_dev.load_state(saved["max_dev"])
    run.progress, progress.t0 = progress, time.perf_counter()
    return progress


def end_of_step(run, progress: EpochProgress) -> None:
    """After an optimizer step: a periodic checkpoint every ``train.checkpoint_every_steps`` steps; on a preemption
    signal (any rank's) a checkpoint, ``metrics.json`` status preempted, and :class:`Preempted`."""
    progress.step += 1
    every, global_step = int(run.cfg.train.get("checkpoint_every_steps") or 0), run.scheduler.last_epoch
    if run.guard is not None and run.guard.should_stop():
        preempt(run, global_step)
    if every and global_step % every == 0 and progress.step < run.steps_per_epoch:
        save_mid_epoch(run)  # the epoch's end writes its own


def save_mid_epoch(run) -> None:
    """Write ``last.ckpt`` now (rank 0), with every rank's partial sums under torchrun (a collective: all ranks)."""
    rank_sums = None
    if run.dist.enabled and run.progress is not None:
        import torch.distributed as dist

        rank_sums = [None] * run.dist.world_size
        dist.all_gather_object(rank_sums, run.progress.sums.state())
    if run.dist.is_main:
        state = state_of(run)
        if rank_sums is not None:
            state["progress"]["rank_sums"] = rank_sums
        save_checkpoint(run.run_dir / CKPT_NAME, state)


def _own_sums(saved: dict, dist_info) -> dict:
    """This rank's partial sums of a mid-epoch checkpoint (rank 0's alone when it was written by one process)."""
    rank_sums = saved.get("rank_sums")
    if isinstance(rank_sums, list) and len(rank_sums) == dist_info.world_size:
        return rank_sums[dist_info.rank]
    return saved["sums"]


def finish_epoch(run, progress: EpochProgress) -> dict:
    """The epoch's training columns of its metrics row (its lr, sums, training time, the scaler's skipped steps)."""
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)  # count the kernels still queued in this epoch's training time
    stats, run.progress = scaler_stats(run.scaler), None
    return {"lr": progress.lr, **progress.sums.totals(), "train_seconds": progress.train_seconds(),
            "seconds_before": progress.seconds_before, "loss_scale": stats["loss_scale"],
            "skipped_steps": stats["skipped_steps"] - progress.skipped_before}


def stop_between_epochs(run, saved: bool) -> None:
    """After an epoch (and its checkpoint when ``saved``): stop if a preemption signal arrived meanwhile."""
    if run.guard is not None and run.guard.should_stop():
        preempt(run, run.scheduler.last_epoch, save=not saved)


def preempt(run, global_step: int, save: bool = True) -> None:
    """Save the checkpoint (rank 0), mark ``metrics.json`` preempted, end the logger and raise :class:`Preempted`."""
    if save:
        save_mid_epoch(run)
    if run.dist.is_main:
        run.metrics.write(status="preempted")
    where = f"epoch {run.epochs_done + 1}, batch {run.progress.step}" if run.progress else f"epoch {run.epochs_done}"
    log.warning("preemption signal: checkpoint saved after step %d (%s)", global_step, where)
    run.logger.finish("preempted")
    raise Preempted(run.guard.signum, global_step, run.guard)
