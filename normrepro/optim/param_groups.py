"""Weight-decay policies: which parameters are decayed.

- ``all``: every parameter (the paper's "WD on").
- ``conv_linear``: weights of conv and linear layers only (no biases, no norm parameters).
- ``classifier``: only the final classifier ``model.fc`` (weight and bias; the paper's "WD off").
- ``none``: nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from normrepro.errors import choice_error

WD_POLICIES = ("all", "conv_linear", "classifier", "none")

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def decayed_parameter_names(model: nn.Module, policy: str) -> set[str]:
    if policy not in WD_POLICIES:
        raise choice_error("optim.wd_policy", policy, WD_POLICIES)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if policy == "all":
        return set(names)
    if policy == "none":
        return set()
    if policy == "classifier":
        fc = getattr(model, "fc", None)
        if not isinstance(fc, nn.Module):
            raise ValueError("wd_policy=classifier needs the model's classifier at `model.fc`")
        return {f"fc.{n}" for n, _ in fc.named_parameters()}
    decayed = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _WEIGHTED):
            for p_name, _ in mod.named_parameters(recurse=True):
                # `weight` or parametrized weights (parametrizations.weight.original*)
                if p_name == "weight" or p_name.startswith("parametrizations.weight"):
                    decayed.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return decayed


def param_groups(model: nn.Module, weight_decay: float, policy: str) -> list[dict]:
    """Two SGD parameter groups: ``decay`` (weight_decay) and ``no_decay`` (0); empty groups dropped."""
    decayed = decayed_parameter_names(model, policy)
    groups = {"decay": [], "no_decay": []}
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups["decay" if n in decayed else "no_decay"].append(p)
    out = []
    if groups["decay"]:
        out.append({"params": groups["decay"], "weight_decay": float(weight_decay), "name": "decay"})
    if groups["no_decay"]:
        out.append({"params": groups["no_decay"], "weight_decay": 0.0, "name": "no_decay"})
    return out


def count_params(groups: list[dict]) -> dict[str, int]:
    return {g["name"]: sum(p.numel() for p in g["params"]) for g in groups if isinstance(g["params"][0], torch.Tensor)}
