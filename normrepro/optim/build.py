"""``build_optimizer(model, optim_cfg)``: SGD with momentum over the weight-decay policy's groups."""
from __future__ import annotations

import torch
from torch import nn

from normrepro.errors import choice_error
from normrepro.optim.param_groups import param_groups
from normrepro.optim.wd_lr import ScaleInvariantSGD

OPTIMIZERS = ("sgd",)


def build_optimizer(model: nn.Module, cfg, scale_invariant: set[str] | None = None) -> torch.optim.Optimizer:
    """SGD over the weight-decay policy's groups. With ``optim.mode`` lr_correction / norm_schedule the weights
    named in ``scale_invariant`` form an undecayed group that follows the reference norms (``wd_lr.py``; with
    ``optim.correction``, ``optim.reference_epoch`` and ``optim.reference_interpolation``)."""
    name = cfg.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise choice_error("optimizer", name, OPTIMIZERS)
    mode = cfg.get("mode", "standard") or "standard"
    groups = param_groups(model, float(cfg.get("weight_decay", 0.0)), cfg.get("wd_policy", "all"),
                          scale_invariant if mode != "standard" else None)
    for g in groups:
        g["fixed_lr"] = bool(g["scale_invariant"] and mode == "norm_schedule")
    return ScaleInvariantSGD(
        groups,
        mode=mode,
        correction=cfg.get("correction", "after_momentum"),
        reference_epoch=cfg.get("reference_epoch", "end"),
        reference_interpolation=cfg.get("reference_interpolation", "none") or "none",
        lr=float(cfg.lr),
        momentum=float(cfg.get("momentum", 0.9)),
        nesterov=bool(cfg.get("nesterov", False)),
    )
