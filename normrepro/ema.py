"""EMA of the weights (``train.ema_decay``): ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``.

Updated after every optimizer step: ``ema = decay * ema + (1 - decay) * w`` for every parameter (the first update
copies the weights). The buffers (the norms' running mean and scale, ``num_batches_tracked``) are not averaged: they
are copied from the raw model at each update (``use_buffers=False``), so the EMA weights are evaluated with the raw
model's running statistics. ``torch.optim.swa_utils.update_bn(loader, ema.module)`` recomputes statistics that match
the EMA weights exactly, at the cost of a pass over the training set.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    """The EMA copy of ``model`` (``module``: evaluate it like the model); ``update()`` after each step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.source = float(decay), model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model."""
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average (and copy its buffers)."""
        self.averaged.update_parameters(self.source)

    def state_dict(self) -> dict:
        """The averaged weights, buffers and update count (tensors only: ``weights_only``-loadable)."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.averaged.load_state_dict(state)


def build_ema(model: torch.nn.Module, decay) -> WeightEMA | None:
    """A :class:`WeightEMA` of ``model`` for ``train.ema_decay`` in (0, 1); None when it is null or 0."""
    return WeightEMA(model, float(decay)) if decay else None
