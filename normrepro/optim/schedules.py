"""Learning-rate schedules as a per-step multiplier of the base LR (``torch.optim.lr_scheduler.LambdaLR``).

t = step / steps_per_epoch is the (fractional) epoch.
- ``multistep``: gamma ** (number of milestones m with floor(t) >= m). Milestones < 1 are fractions of the epochs.
- ``cosine``: 0.5 * (1 + cos(pi * t / epochs)).
- ``constant``: 1.
Linear warm-up over ``warmup_epochs`` from ``warmup_start_factor`` multiplies any of them.
"""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR

from normrepro.errors import ConfigError, choice_error

SCHEDULES = ("multistep", "cosine", "constant")


def _milestones(milestones, epochs: int) -> list[float]:
    return sorted(float(m) * epochs if 0 < float(m) < 1 else float(m) for m in (milestones or []))


def lr_factor(epoch: float, sched: dict, epochs: int) -> float:
    """The multiplier of the base learning rate at fractional epoch ``epoch``."""
    name = sched.get("name", "multistep")
    if name == "multistep":
        drops = sum(math.floor(epoch + 1e-9) >= m for m in _milestones(sched.get("milestones"), epochs))
        f = float(sched.get("gamma", 0.1)) ** drops
    elif name == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(epochs, 1), 1.0)))
    elif name == "constant":
        f = 1.0
    else:
        raise choice_error("optim.schedule.name", name, SCHEDULES)
    warmup = float(sched.get("warmup_epochs", 0) or 0)
    if warmup > 0 and epoch < warmup:
        start = float(sched.get("warmup_start_factor", 0.1))
        f *= start + (1.0 - start) * epoch / warmup
    return f


def build_scheduler(optimizer, sched: dict, epochs: int, steps_per_epoch: int) -> LambdaLR:
    """A per-step LambdaLR following ``lr_factor``; call ``.step()`` after every optimizer step."""
    sched = dict(sched or {})
    if sched.get("name", "multistep") not in SCHEDULES:
        raise choice_error("optim.schedule.name", sched.get("name"), SCHEDULES)
    if steps_per_epoch <= 0:
        raise ConfigError(f"no training batches per epoch (steps_per_epoch={steps_per_epoch}); lower train.batch_size")
    def factor(step):
        return lr_factor(step / steps_per_epoch, sched, epochs)

    # groups flagged ``fixed_lr`` (the norm_schedule arm's scale-invariant weights) keep the base LR
    return LambdaLR(optimizer, [(lambda step: 1.0) if g.get("fixed_lr") else factor for g in optimizer.param_groups])
