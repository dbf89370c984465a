"""The largest |x - mu| each norm layer sees in an epoch of training (``norm.track_max_dev=true``, docs/paper.md §1.4).

A tracking layer leaves the largest |x - mu| of its last training batch in ``last_max_dev`` (a detached 0-dim
tensor). :class:`MaxDevTracker` keeps the running maximum of each such layer on the device (no host sync per step)
and turns it into floats once per epoch: ``metrics.json``'s ``max_abs_dev`` column.
"""
from __future__ import annotations

import torch
from torch import nn


class MaxDevTracker:
    """Per epoch, the largest |x - mu| of every norm layer of ``model`` that tracks it."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.layers = {name: m for name, m in model.named_modules() if getattr(m, "track_max_dev", False)}
        self.device = device
        self._max: dict[str, torch.Tensor] = {}
        self.start_epoch()

    def __bool__(self) -> bool:
        return bool(self.layers)

    def start_epoch(self) -> None:
        """Reset the running maxima (0 for every tracking layer)."""
        self._max = {name: torch.zeros((), device=self.device) for name in self.layers}

    def update(self) -> None:
        """Fold in each layer's last training batch (call after every step; stays on the device)."""
        for name, m in self.layers.items():
            if m.last_max_dev is not None:
                self._max[name] = torch.maximum(self._max[name], m.last_max_dev.float())

    def state(self) -> dict[str, torch.Tensor]:
        """The running maxima so far (CPU tensors) for a mid-epoch checkpoint."""
        return {name: v.cpu() for name, v in self._max.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the epoch from :meth:`state` (layers it does not name start at 0)."""
        for name in self._max:
            if name in state:
                self._max[name] = state[name].to(self.device)

    def summary(self) -> dict[str, float]:
        """{layer name: largest |x - mu| since ``start_epoch``} (one host sync)."""
        return {name: float(v) for name, v in self._max.items()}
