"""Weight normalization of conv layers (issue 5): bounded WN (BWN), plain WN, BWN with bounded gains.

docs/paper.md §1.5. For a conv weight with output channels c, ``v_c`` the stored (unconstrained) parameter:

- ``bwn``:      w_c = rho * v_c / ||v_c||_2, with rho a FIXED per-layer scalar buffer (not learned),
                rho = mean over output channels of the initial per-channel norm ||w_c^init||_2.
                Every channel of the effective weight has norm rho, whatever happens to v.
- ``wn``:       w_c = g_c * v_c / ||v_c||_2 (Salimans & Kingma), learned g; torch's
                ``torch.nn.utils.parametrizations.weight_norm`` (g starts at ||w_c^init||, so the
                forward is unchanged by applying it).
- ``bwn_gain``: w_c = (g_c * ||g0||_2 / ||g||_2) * v_c / ||v_c||_2, learned per-channel gains g that are
                rescaled every forward so the gain vector keeps its initial norm ||g0||_2 (a fixed buffer);
                g starts at the initial per-channel norms, so the forward is unchanged by applying it.
- ``none``:     nothing.

Only conv layers are parametrized (``nn.modules.conv._ConvNd``: every ``nn.Conv2d``); the classifier
``model.fc`` (a Linear) stays plain. The parametrizations use
``torch.nn.utils.parametrize.register_parametrization``, so ``module.weight`` is the effective weight and
``state_dict()`` holds ``<conv>.parametrizations.weight.original`` (v; ``original0``/``original1`` = g/v
for wn and bwn_gain) plus the buffers (``...weight.0.rho``, ``...weight.0.g0_norm``): a checkpoint restores
the effective weights exactly into a model built the same way and passed through ``apply_weight_norm``.

Usage (trainer): ``apply_weight_norm(model, cfg.norm.get("weight_norm", "none"))`` right after
``build_model`` and before moving the model to its device / dtype.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from normrepro.channel_norms import channel_norms
from normrepro.errors import ConfigError, choice_error

KINDS = ("none", "bwn", "wn", "bwn_gain")
# spellings accepted for "none" (YAML false/off/null)
_NONE_ALIASES = {None, False, "none", "false", "off", "null", ""}


class BoundedWeightNorm(nn.Module):
    """w_c = rho * v_c / ||v_c||_2, rho a fixed buffer (mean initial per-channel norm of the layer)."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        self.eps = eps
        with torch.no_grad():
            rho = channel_norms(weight, keepdim=True).mean().to(weight.dtype)
        self.register_buffer("rho", rho)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        n = channel_norms(v, keepdim=True).clamp_min(self.eps)
        return (v * (self.rho / n).to(v.dtype))

    def extra_repr(self) -> str:
        return f"rho={float(self.rho):.4g}"


class BoundedGainWeightNorm(nn.Module):
    """w_c = (g_c * ||g0||_2 / ||g||_2) * v_c / ||v_c||_2: learned gains g, their norm held at ||g0||_2.

    Two originals (like torch's weight_norm): ``original0`` = g (shape (C_out, 1, ..., 1)), ``original1`` = v.
    """

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        self.eps = eps
        with torch.no_grad():
            g0_norm = torch.linalg.vector_norm(channel_norms(weight, keepdim=True)).to(weight.dtype)
        self.register_buffer("g0_norm", g0_norm)

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g_scaled = g * (self.g0_norm / torch.linalg.vector_norm(g).clamp_min(self.eps))
        return v * (g_scaled / channel_norms(v, keepdim=True).clamp_min(self.eps)).to(v.dtype)

    def right_inverse(self, w: torch.Tensor):
        """(g, v) with g = per-channel norms of w and v = w (exact when ||g|| equals g0_norm)."""
        return channel_norms(w, keepdim=True).to(w.dtype), w

    def extra_repr(self) -> str:
        return f"g0_norm={float(self.g0_norm):.4g}"


def _check_kind(kind) -> str:
    if isinstance(kind, str):
        kind = kind.strip().lower()
    if kind in _NONE_ALIASES:
        return "none"
    if kind is True:  # `weight_norm: true` in YAML = bounded WN
        return "bwn"
    if kind not in KINDS:
        raise choice_error("norm.weight_norm", kind, KINDS)
    return kind


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every conv layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def apply_weight_norm(model: nn.Module, kind="none") -> nn.Module:
    """Parametrize the weight of every conv layer of ``model`` with ``kind`` (see the module docstring);
    returns ``model`` (modified in place). ``model.fc`` and other Linear layers are left alone."""
    kind = _check_kind(kind)
    if kind == "none":
        return model
    for name, conv in conv_layers(model):
        if parametrize.is_parametrized(conv, "weight"):
            raise ConfigError(f"conv layer {name!r} already has a weight parametrization; apply weight_norm once")
        if kind == "wn":
            torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=0)
        elif kind == "bwn":
            parametrize.register_parametrization(conv, "weight", BoundedWeightNorm(conv.weight.detach()))
        else:  # bwn_gain
            parametrize.register_parametrization(conv, "weight", BoundedGainWeightNorm(conv.weight.detach()))
    return model


def weight_norm_kind(module: nn.Module) -> str:
    """Which of KINDS parametrizes ``module.weight`` ("none" if plain, "other" if unknown)."""
    if not parametrize.is_parametrized(module, "weight"):
        return "none"
    p = module.parametrizations.weight[0]
    if isinstance(p, BoundedWeightNorm):
        return "bwn"
    if isinstance(p, BoundedGainWeightNorm):
        return "bwn_gain"
    if type(p).__name__ == "_WeightNorm":
        return "wn"
    return "other"


@torch.no_grad()
def weight_norm_summary(model: nn.Module) -> list[dict]:
    """Per conv layer: name, kind, ``norm`` (L2 norm of the whole effective weight), ``mean_channel_norm``,
    ``min_channel_norm``/``max_channel_norm`` and, where the layer has one, ``rho`` (bwn) or ``gain_norm``
    (||g||_2 of the learned gains, wn/bwn_gain, before bwn_gain's rescaling) and ``g0_norm`` (bwn_gain)."""
    rows = []
    for name, conv in conv_layers(model):
        kind = weight_norm_kind(conv)
        w = conv.weight
        cn = channel_norms(w)
        row = {"name": name, "kind": kind, "norm": float(torch.linalg.vector_norm(cn)),
               "mean_channel_norm": float(cn.mean()), "min_channel_norm": float(cn.min()),
               "max_channel_norm": float(cn.max())}
        if kind == "bwn":
            row["rho"] = float(conv.parametrizations.weight[0].rho)
        elif kind in ("wn", "bwn_gain"):
            row["gain_norm"] = float(torch.linalg.vector_norm(conv.parametrizations.weight.original0.float()))
            if kind == "bwn_gain":
                row["g0_norm"] = float(conv.parametrizations.weight[0].g0_norm)
        rows.append(row)
    return rows
