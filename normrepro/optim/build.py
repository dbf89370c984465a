"""``build_optimizer(model, optim_cfg)``: SGD with momentum over the weight-decay policy's groups."""
from __future__ import annotations

import torch
from torch import nn

from normrepro.errors import choice_error
from normrepro.optim.param_groups import param_groups

OPTIMIZERS = ("sgd",)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    name = cfg.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise choice_error("optimizer", name, OPTIMIZERS)
    groups = param_groups(model, float(cfg.get("weight_decay", 0.0)), cfg.get("wd_policy", "all"))
    return torch.optim.SGD(
        groups,
        lr=float(cfg.lr),
        momentum=float(cfg.get("momentum", 0.9)),
        nesterov=bool(cfg.get("nesterov", False)),
    )
