"""SGD whose scale-invariant weights follow a reference run's weight norms instead of weight decay (docs/paper.md
§1.2, §6).

Parameter groups flagged ``scale_invariant`` (weights of the layers feeding a norm, not decayed) are treated per
output channel c. A ``wd_on`` reference run records ‖w_c^WD‖ at every epoch boundary (``weight_norms.pt``: entry 0 =
initialization, entry k = the end of the k-th epoch, i.e. of 0-based epoch k - 1). ``begin_epoch`` picks the
entry used during 0-based epoch e (``optim.reference_epoch``):

- ``end`` (default, the authors'): entry e + 1, the norm at the *end* of epoch e. Their ``normmatters_wd`` records
  nothing at initialization, so their ``norms_dict[e]`` (read by ``SGDWDMimic`` during their 0-based epoch e) is
  the norm after epoch e's training = our entry e + 1.
- ``start`` (this project's earlier choice, not the paper's): entry e, the norm at the start of epoch e.

``optim.reference_interpolation=linear`` (either reference epoch) moves the target at step i of ``steps`` linearly
from the picked entry k to entry k + 1: start + linear follows the reference at the same time (e + i/steps),
end + linear one epoch ahead (e + 1 + i/steps); past the last recorded entry the target stays put.

Modes (``optim.mode``):

- ``lr_correction``: channel c steps with η·‖w_c‖²/‖w_c^WD‖², ‖w_c‖ of the current weight before the update, so
  its effective step η/‖w_c‖²·ratio = η/‖w_c^WD‖² is the reference's. ``optim.correction`` says where the ratio
  applies: ``after_momentum`` (default, the authors' ``SGDWDMimic``): d = g + wd·w, buf = μ·buf + (1 - dampening)·d
  (buf = d on the first step), step = d + μ·buf with Nesterov else buf, w -= η·ratio·step: the buffer holds the
  plain gradient and Nesterov's look-ahead term is scaled by the same ratio (their behaviour, matched). The
  scale-invariant group has wd = 0 (``param_groups``), as theirs. ``before_momentum``: the gradient is scaled by
  the ratio and then plain SGD runs (the buffer accumulates corrected gradients).
- ``norm_schedule``: the group's LR stays at the base LR (``fixed_lr``, see ``schedules.py``); after every plain
  SGD step channel c is rescaled to ‖w_c^WD‖·m(epoch), m = (base LR / scheduled LR)^½ (with lr ×0.1 every 20
  epochs, m = (√10)^⌊e/20⌋): growing the norm by √10 divides the effective step by 10, which replaces the LR drop.
  The momentum buffer is not rescaled (as theirs).
- ``standard``: plain SGD.
Works with any model: the flagged groups carry the parameter names (``names``) of the layers' weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.channel_norms import channel_norms, load_reference
from normrepro.errors import ConfigError, choice_error
from normrepro.optim.schedules import lr_factor

MODES = ("standard", "lr_correction", "norm_schedule")
CORRECTIONS = ("after_momentum", "before_momentum")
REFERENCE_EPOCHS = ("end", "start")
INTERPOLATIONS = ("none", "linear")


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def reference_index(epoch: int, reference_epoch: str = "end") -> int:
    """The recorder entry (0 = initialization, k = end of the k-th epoch) used during 0-based ``epoch``."""
    if reference_epoch not in REFERENCE_EPOCHS:
        raise choice_error("optim.reference_epoch", reference_epoch, REFERENCE_EPOCHS)
    return epoch + 1 if reference_epoch == "end" else epoch


def reference_entries_needed(epochs: int, reference_epoch: str = "end") -> int:
    """How many recorded epoch boundaries a run of ``epochs`` epochs reads (a reference of ``epochs`` epochs has
    epochs + 1)."""
    return reference_index(max(int(epochs), 1) - 1, reference_epoch) + 1


class ScaleInvariantSGD(torch.optim.SGD):
    """``torch.optim.SGD`` + the ``lr_correction`` / ``norm_schedule`` treatment of groups with ``scale_invariant``."""

    def __init__(self, params, mode: str = "standard", correction: str = "after_momentum",
                 reference_epoch: str = "end", reference_interpolation: str = "none", **sgd_kwargs):
        for key, value, choices in (("optim.mode", mode, MODES), ("optim.correction", correction, CORRECTIONS),
                                    ("optim.reference_epoch", reference_epoch, REFERENCE_EPOCHS),
                                    ("optim.reference_interpolation", reference_interpolation, INTERPOLATIONS)):
            if value not in choices:
                raise choice_error(key, value, choices)
        super().__init__(params, **sgd_kwargs)
        self.mode, self.correction, self.reference_epoch = mode, correction, reference_epoch
        self.interpolate = reference_interpolation == "linear"
        self.multiplier = 1.0
        self._targets: dict[str, torch.Tensor] = {}
        self._ends: dict[str, torch.Tensor] | None = None
        self._steps, self._step_in_epoch = 1, 0

    def begin_epoch(self, epoch: int, reference: list[dict[str, torch.Tensor]], multiplier: float = 1.0,
                    steps: int = 1, start: int = 0) -> None:
        """Set this (0-based) epoch's targets from the reference's recorded norms (entry per ``reference_epoch``,
        interpolated to the next entry over ``steps`` steps with ``reference_interpolation=linear``); ``start``:
        the optimizer steps of this epoch already taken (a mid-epoch resume)."""
        k = reference_index(epoch, self.reference_epoch)
        if k >= len(reference):
            raise ConfigError(f"optim.reference recorded {len(reference)} epoch boundaries; epoch {epoch + 1} with "
                              f"optim.reference_epoch={self.reference_epoch} needs entry {k}")
        end = reference[k + 1] if self.interpolate and k + 1 < len(reference) else None
        self.set_targets(reference[k], multiplier, end, steps, start)

    def set_targets(self, norms_by_layer: dict[str, torch.Tensor], multiplier: float = 1.0,
                    end: dict[str, torch.Tensor] | None = None, steps: int = 1, start: int = 0) -> None:
        """Per-channel target norms for this epoch, keyed by layer name (weights are ``<layer>.weight``);
        with ``end``, the target at step i of ``steps`` is start + (i / steps)·(end - start)."""
        self._targets = {f"{layer}.weight": n for layer, n in norms_by_layer.items()}
        self._ends = None if end is None else {f"{layer}.weight": n for layer, n in end.items()}
        self.multiplier = float(multiplier)
        self._steps, self._step_in_epoch = max(int(steps), 1), int(start)

    @property
    def step_in_epoch(self) -> int:
        """Optimizer steps taken since this epoch's targets were set (a loss scaler's skipped steps do not count)."""
        return self._step_in_epoch

    def _target(self, name: str, device) -> torch.Tensor:
        t = self._targets[name].to(device)
        if self._ends is not None:
            t = torch.lerp(t, self._ends[name].to(device), min(self._step_in_epoch / self._steps, 1.0))
        return t

    def _ratio(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """‖w_c‖² / ‖w_c^WD‖² per output channel, from the current weight."""
        return channel_norms(p).pow(2) / self._target(name, p.device).pow(2).clamp_min(1e-24)

    def _flagged(self):
        for group in self.param_groups:
            if group.get("scale_invariant"):
                yield from zip(group["names"], group["params"])

    def _corrected_step(self, group: dict) -> None:
        """The authors' update of one flagged group: w -= lr·ratio·(momentum step on the plain gradient)."""
        momentum, dampening = group["momentum"], group["dampening"]
        for name, p in zip(group["names"], group["params"]):
            if p.grad is None:
                continue
            ratio = _per_channel(self._ratio(name, p), p)  # before the update
            d = p.grad.neg() if group.get("maximize") else p.grad
            if group["weight_decay"] != 0:
                d = d.add(p, alpha=group["weight_decay"])
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    buf.mul_(momentum).add_(d, alpha=1 - dampening)
                d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
            p.add_(d * ratio, alpha=-group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        """One SGD step; flagged groups follow the reference (lr_correction or norm_schedule)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.mode == "lr_correction" and self.correction == "before_momentum":
            for name, p in self._flagged():
                if p.grad is not None:
                    p.grad.mul_(_per_channel(self._ratio(name, p), p.grad))
        elif self.mode == "lr_correction":  # after_momentum: flagged groups stepped here, the rest by torch's SGD
            for group in self.param_groups:
                if group.get("scale_invariant"):
                    self._corrected_step(group)
                    hidden += [(p, p.grad) for p in group["params"] if p.grad is not None]
        try:
            for p, _ in hidden:  # torch's SGD skips parameters without a gradient
                p.grad = None
            super().step()
        finally:
            for p, g in hidden:
                p.grad = g
        if self.mode == "norm_schedule":
            for name, p in self._flagged():
                target = self._target(name, p.device) * self.multiplier
                p.mul_(_per_channel(target / channel_norms(p).clamp_min(1e-12), p))
        self._step_in_epoch += 1
        return loss


@dataclass
class ReferenceTargets:
    """A ``wd_on`` reference run's per-channel norms (one dict per recorded epoch boundary) and how each epoch hands
    them to a :class:`ScaleInvariantSGD`: ``apply(optimizer, epoch)`` calls ``begin_epoch`` with the norm-schedule
    multiplier m(e) = lr_factor(e)^(-1/2)."""
    norms: list[dict[str, torch.Tensor]]
    schedule: dict
    epochs: int
    steps_per_epoch: int

    @classmethod
    def from_config(cls, optim_cfg, si_layers, epochs: int, steps_per_epoch: int) -> ReferenceTargets | None:
        """The reference of ``optim.mode`` lr_correction / norm_schedule, checked against this run's scale-invariant
        layers (None for ``standard``)."""
        mode = optim_cfg.get("mode", "standard") or "standard"
        if mode == "standard":
            return None
        if not optim_cfg.get("reference"):
            raise ConfigError(f"optim.mode={mode} needs optim.reference=<run dir of a wd_on run> (its weight_norms.pt)")
        if not si_layers:
            raise ConfigError(f"optim.mode={mode}: this model has no scale-invariant layers (conv/linear before a "
                              f"norm)")
        for name, m in si_layers:
            if not isinstance(getattr(m, "weight", None), torch.nn.Parameter):
                raise ConfigError(f"optim.mode={mode} needs plain weights; layer {name!r} is reparametrized "
                                  f"(model.weight_norm) — use weight_norm=none")
        needed = reference_entries_needed(epochs, optim_cfg.get("reference_epoch", "end"))
        norms = load_reference(optim_cfg.reference, {n: int(m.weight.shape[0]) for n, m in si_layers}, needed)
        return cls(norms, dict(optim_cfg.schedule), epochs, steps_per_epoch)

    def apply(self, optimizer: ScaleInvariantSGD, epoch: int, start: int = 0) -> None:
        """Set 0-based epoch ``epoch``'s targets on ``optimizer`` (the entry its ``reference_epoch`` picks);
        ``start``: the optimizer steps of this epoch already taken (a mid-epoch resume)."""
        optimizer.begin_epoch(epoch, self.norms, lr_factor(epoch, self.schedule, self.epochs) ** -0.5,
                              self.steps_per_epoch, start)
