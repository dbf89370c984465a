"""Weight-decay policies: which parameters are decayed.

- ``all``: every parameter (the paper's "WD on").
- ``conv_linear``: weights of conv and linear layers only (no biases, no norm parameters).
- ``classifier``: only the final classifier ``model.fc`` (weight and bias; the paper's "WD off").
- ``none``: nothing.
- ``wd_on`` / ``wd_off``: the paper's names for ``all`` / ``classifier``.
"""
from __future__ import annotations

import torch
from torch import nn

from normrepro.errors import choice_error

WD_POLICIES = ("all", "conv_linear", "classifier", "none", "wd_on", "wd_off")
ALIASES = {"wd_on": "all", "wd_off": "classifier"}

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def decayed_parameter_names(model: nn.Module, policy: str) -> set[str]:
    """Names of the parameters that weight-decay policy ``policy`` (one of WD_POLICIES) decays."""
    if policy not in WD_POLICIES:
        raise choice_error("optim.wd_policy", policy, WD_POLICIES)
    policy = ALIASES.get(policy, policy)
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


def param_groups(model: nn.Module, weight_decay: float, policy: str,
                 scale_invariant: set[str] | None = None) -> list[dict]:
    """SGD parameter groups ``decay`` (weight_decay) and ``no_decay`` (0), each with the parameter ``names``;
    the parameters named in ``scale_invariant`` go to a third, undecayed group flagged ``scale_invariant``
    (see ``normrepro.optim.wd_lr``). Empty groups are dropped."""
    decayed = decayed_parameter_names(model, policy)
    scale_invariant = scale_invariant or set()
    groups = {"decay": ([], []), "no_decay": ([], []), "scale_invariant": ([], [])}
    for n, p in model.named_parameters():
        if p.requires_grad:
            key = "scale_invariant" if n in scale_invariant else "decay" if n in decayed else "no_decay"
            groups[key][0].append(p)
            groups[key][1].append(n)
    out = []
    for key, (params, names) in groups.items():
        if params:
            out.append({"params": params, "names": names, "name": key,
                        "weight_decay": float(weight_decay) if key == "decay" else 0.0,
                        "scale_invariant": key == "scale_invariant"})
    return out


def count_params(groups: list[dict]) -> dict[str, int]:
    """{group name: number of parameter elements} of ``param_groups``' output."""
    return {g["name"]: sum(p.numel() for p in g["params"]) for g in groups if isinstance(g["params"][0], torch.Tensor)}
