"""Preemption: SIGTERM (SLURM, torchrun) and SIGUSR2 (submitit) ask a run to stop at the next step boundary.

:class:`PreemptionGuard` installs handlers that only record the signal: a handler runs between two bytecodes of the
main thread, possibly halfway through a step, so saving there could capture a half-updated model. The training loop
asks :meth:`PreemptionGuard.should_stop` after every optimizer step (under torchrun the ranks agree: one rank's signal
stops all of them after the same step), saves a mid-epoch checkpoint and raises :class:`Preempted`; the entry point
then calls :meth:`PreemptionGuard.forward` (the handler that was there before, e.g. submitit's requeue) or exits with
:data:`EXIT_PREEMPTED`. Leaving the ``with`` block restores the previous handlers.
"""
from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 4  # stopped on a signal after saving a resumable checkpoint; run the same command again
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Preempted(Exception):
    """Raised by the loop after it saved a mid-epoch checkpoint on a preemption signal."""

    def __init__(self, signum: int, step: int, guard: PreemptionGuard | None = None):
        super().__init__(f"stopped on {signal.Signals(signum).name} after step {step}; the checkpoint resumes it")
        self.signum, self.step, self.guard = signum, step, guard

    def forward(self) -> bool:
        """Hand the signal to the handler that was installed before the guard (:meth:`PreemptionGuard.forward`)."""
        return self.guard is not None and self.guard.forward()


class PreemptionGuard:
    """``with PreemptionGuard() as guard:`` records SIGTERM/SIGUSR2 instead of dying; ``guard.should_stop()``."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # signal.signal works in the main thread only
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():  # kept: forward() may run after the block
            signal.signal(s, handler)

    def _record(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether a preemption signal arrived in this process."""
        return self.signum is not None

    def should_stop(self) -> bool:
        """Whether to stop after this step: this process's signal, or any rank's under torchrun (one all-reduce)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        import torch

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(self.signum or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item() > 0:
            self.signum = int(flag.item())
        return flag.item() > 0

    def forward(self) -> bool:
        """Call the handler that was installed before this guard for the recorded signal (e.g. submitit's
        checkpoint-and-requeue); False when there was none (default or ignored)."""
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous):
            previous(self.signum, None)
            return True
        return False
