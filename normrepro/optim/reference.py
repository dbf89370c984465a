"""The per-epoch targets of ``optim.mode`` lr_correction / norm_schedule (docs/paper.md §1.2).

A ``wd_on`` reference run recorded ‖w_c‖ of every scale-invariant layer at each epoch boundary
(``weight_norms.pt``, :mod:`normrepro.channel_norms`). At the start of epoch e, :meth:`ReferenceTargets.apply`
hands the optimizer (:class:`normrepro.optim.wd_lr.ScaleInvariantSGD`) the reference norms of boundary e, the
norm-schedule multiplier m(e) = lr_factor(e)^(-1/2), and with ``optim.reference_interpolation=linear`` the norms of
boundary e + 1 to move towards within the epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.channel_norms import load_reference
from normrepro.errors import ConfigError, choice_error
from normrepro.optim.schedules import lr_factor

INTERPOLATIONS = ("none", "linear")


@dataclass
class ReferenceTargets:
    """The reference run's norms per epoch boundary and how to hand them to the optimizer each epoch."""
    norms: list[dict[str, torch.Tensor]]
    schedule: dict
    epochs: int
    steps_per_epoch: int
    interpolate: bool

    @classmethod
    def from_config(cls, optim_cfg, si_layers, epochs: int, steps_per_epoch: int) -> ReferenceTargets | None:
        """The targets of ``optim.mode`` lr_correction / norm_schedule (None for ``standard``); checks the config."""
        norms = _reference_norms(optim_cfg, si_layers, epochs)
        interpolation = optim_cfg.get("reference_interpolation", "none")
        if interpolation not in INTERPOLATIONS:
            raise choice_error("optim.reference_interpolation", interpolation, INTERPOLATIONS)
        if norms is None:
            return None
        return cls(norms, dict(optim_cfg.schedule), epochs, steps_per_epoch, interpolation == "linear")

    def apply(self, optimizer, epoch: int) -> None:
        """Set epoch ``epoch``'s targets on ``optimizer`` (a ScaleInvariantSGD)."""
        end = self.norms[epoch + 1] if self.interpolate and epoch + 1 < len(self.norms) else None
        optimizer.set_targets(self.norms[epoch], lr_factor(epoch, self.schedule, self.epochs) ** -0.5, end,
                              self.steps_per_epoch)


def _reference_norms(optim_cfg, si_layers, epochs: int) -> list[dict[str, torch.Tensor]] | None:
    """The reference run's per-epoch norms for optim.mode lr_correction / norm_schedule (else None)."""
    mode = optim_cfg.get("mode", "standard") or "standard"
    if mode == "standard":
        return None
    if not optim_cfg.get("reference"):
        raise ConfigError(f"optim.mode={mode} needs optim.reference=<run dir of a wd_on run> (its weight_norms.pt)")
    if not si_layers:
        raise ConfigError(f"optim.mode={mode}: this model has no scale-invariant layers (conv/linear before a norm)")
    for name, m in si_layers:
        if not isinstance(getattr(m, "weight", None), torch.nn.Parameter):
            raise ConfigError(f"optim.mode={mode} needs plain weights; layer {name!r} is reparametrized "
                              f"(model.weight_norm) — use weight_norm=none")
    return load_reference(optim_cfg.reference, {n: int(m.weight.shape[0]) for n, m in si_layers}, epochs)
