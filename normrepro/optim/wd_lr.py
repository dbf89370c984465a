"""SGD whose scale-invariant weights follow a reference run's weight norms instead of weight decay (paper §1.2).

Parameter groups flagged ``scale_invariant`` (weights of the layers feeding a norm, not decayed) are treated per
output channel c, with ``targets`` = ‖w_c^WD(epoch)‖ recorded by a ``wd_on`` reference run (set every epoch):

- ``lr_correction``: the step of channel c is η·‖w_c‖²/‖w_c^WD(epoch)‖², done by scaling its gradient by that ratio
  before the SGD update, so its effective step η/‖w_c‖²·ratio = η/‖w_c^WD‖² is the reference run's.
- ``norm_schedule``: the group's LR stays fixed at the base LR; after every step channel c is rescaled to
  ‖w_c^WD(epoch)‖·m(epoch) with m = (base LR / scheduled LR)^½: growing the norm by √10 divides the effective step
  by 10, which replaces the LR drop (with lr ×0.1 every 20 epochs, m = (√10)^⌊epoch/20⌋).
- ``standard``: plain SGD.
Works with any model: the flagged groups carry the parameter names (``names``) of the layers' weights.
The reference is recorded once per epoch; with ``end`` given to ``set_targets`` the target moves linearly from the
epoch's start value to its end value over the epoch's steps (``optim.reference_interpolation=linear``), which
matters early in training, when norms change several-fold within one epoch.
"""
from __future__ import annotations

import torch

from normrepro.channel_norms import channel_norms
from normrepro.errors import choice_error

MODES = ("standard", "lr_correction", "norm_schedule")


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class ScaleInvariantSGD(torch.optim.SGD):
    """``torch.optim.SGD`` + the ``lr_correction`` / ``norm_schedule`` treatment of groups with ``scale_invariant``."""

    def __init__(self, params, mode: str = "standard", **sgd_kwargs):
        if mode not in MODES:
            raise choice_error("optim.mode", mode, MODES)
        super().__init__(params, **sgd_kwargs)
        self.mode = mode
        self.multiplier = 1.0
        self._targets: dict[str, torch.Tensor] = {}
        self._ends: dict[str, torch.Tensor] | None = None
        self._steps, self._step_in_epoch = 1, 0

    def set_targets(self, norms_by_layer: dict[str, torch.Tensor], multiplier: float = 1.0,
                    end: dict[str, torch.Tensor] | None = None, steps: int = 1) -> None:
        """Per-channel target norms for this epoch, keyed by layer name (weights are ``<layer>.weight``);
        with ``end``, the target at step i of ``steps`` is start + (i / steps)·(end - start)."""
        self._targets = {f"{layer}.weight": n for layer, n in norms_by_layer.items()}
        self._ends = None if end is None else {f"{layer}.weight": n for layer, n in end.items()}
        self.multiplier = float(multiplier)
        self._steps, self._step_in_epoch = max(int(steps), 1), 0

    def _target(self, name: str, device) -> torch.Tensor:
        t = self._targets[name].to(device)
        if self._ends is not None:
            t = torch.lerp(t, self._ends[name].to(device), min(self._step_in_epoch / self._steps, 1.0))
        return t

    def _flagged(self):
        for group in self.param_groups:
            if group.get("scale_invariant"):
                yield from zip(group["names"], group["params"])

    @torch.no_grad()
    def step(self, closure=None):
        if self.mode == "lr_correction":
            for name, p in self._flagged():
                if p.grad is not None:
                    ratio = channel_norms(p).pow(2) / self._target(name, p.device).pow(2).clamp_min(1e-24)
                    p.grad.mul_(_per_channel(ratio, p.grad))
        loss = super().step(closure)
        if self.mode == "norm_schedule":
            for name, p in self._flagged():
                target = self._target(name, p.device) * self.multiplier
                p.mul_(_per_channel(target / channel_norms(p).clamp_min(1e-12), p))
        self._step_in_epoch += 1
        return loss
