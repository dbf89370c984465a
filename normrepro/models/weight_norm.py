"""Weight normalization of conv layers (issue 5, issue 11): bounded WN (BWN), plain WN, BWN with bounded gains.

docs/paper.md §1.5, §6. For a conv weight with output channels c, ``v_c`` the stored (unconstrained) parameter:

- ``bwn``:      w_c = rho * v_c / ||v_c||_2, with rho a FIXED per-layer scalar buffer (not learned),
                rho = mean over output channels of the initial per-channel norm ||w_c^init||_2.
                Every channel of the effective weight has norm rho, whatever happens to v.
                ``renorm=True`` (default, ``model.bwn_renorm``; the authors' convNet.pytorch ``bwn.py``): v is stored
                with unit channels and renormalized in place, v_c <- v_c / ||v_c||, before every training-mode
                forward (a forward pre-hook, as theirs), so the gradient is taken at ||v_c|| = 1 and an SGD step
                moves v_c by -lr * rho * (I - v_c v_c^T) dL/dw_c (= -lr * dL/dv_c at the unit direction);
                the direction's step does not shrink as v grows. ``renorm=False`` (this project's earlier variant,
                = norm_matters' ``bwn_alt.py``): v keeps its norm, the step on the direction is
                lr * rho / ||v_c||^2 * (I - u u^T) dL/dw_c and shrinks as ||v_c|| grows.
                Limits of ``renorm``: one forward per graph per conv (a conv called twice before backward would
                see v changed in place), and with fp32 master weights (pure fp16) the master copy is not
                renormalized.
- ``wn``:       w_c = g_c * v_c / ||v_c||_2 (Salimans & Kingma), learned g; torch's
                ``torch.nn.utils.parametrizations.weight_norm`` (g starts at ||w_c^init||, so the
                forward is unchanged by applying it).
- ``bwn_gain``: w_c = (g_c * ||g0||_2 / ||g||_2) * v_c / ||v_c||_2, learned per-channel gains g that are
                rescaled every forward so the gain vector keeps its initial norm ||g0||_2 (a fixed buffer);
                g starts at the initial per-channel norms, so the forward is unchanged by applying it. The variant
                of the authors' ResNet-50 (norm_matters ``models/bwn.py`` + ``resnet_wn.py``); v is not
                renormalized there either.
- ``none``:     nothing.

``init`` (``model.bwn_init``) says where the initial weight, and so the norm budget rho / ||g0|| and the initial
direction, comes from:

- ``torch_default`` (default for ``bwn`` and ``bwn_gain``, the authors'): every conv weight is redrawn with
  PyTorch's default conv initialization (``_ConvNd.reset_parameters``: kaiming-uniform with a = sqrt(5), i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so ||w_c||^2 ~ 1/3) before the reparametrization. Their code wraps the conv
  at construction and their He initialization then writes into ``module.weight``, which at that point is a derived
  tensor recomputed from (g, v) by the next forward's pre-hook: the He draw is discarded and both the budget and
  the direction are PyTorch's default. Only the weight is redrawn; the conv bias keeps the model's initialization.
- ``he`` (default for ``wn``; this project's earlier behaviour): the model's own initialization, as
  ``model.init`` made it (``he``, the default: kaiming-normal, fan_out: ||w_c||^2 ~ 2 C_in / C_out; with
  ``model.init=torch_default`` PyTorch's default, the same distribution as ``bwn_init=torch_default``).

Only conv layers are parametrized (``nn.modules.conv._ConvNd``: every ``nn.Conv2d``); the classifier
``model.fc`` (a Linear) stays plain. The parametrizations use
``torch.nn.utils.parametrize.register_parametrization``, so ``module.weight`` is the effective weight and
``state_dict()`` holds ``<conv>.parametrizations.weight.original`` (v; ``original0``/``original1`` = g/v
for wn and bwn_gain) plus the buffers (``...weight.0.rho``, ``...weight.0.g0_norm``): a checkpoint restores
the effective weights exactly into a model built the same way and passed through ``apply_weight_norm``.

Usage (trainer): ``apply_weight_norm(model, cfg.model.weight_norm, **weight_norm_options(cfg.model))`` right after
``build_model`` and before moving the model to its device / dtype. The ``weight_norm`` config group writes these keys
(``WEIGHT_NORM_KEYS``) into ``model``; they are read here and are not options of the model constructor.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from normrepro.channel_norms import channel_norms
from normrepro.errors import ConfigError, choice_error

KINDS = ("none", "bwn", "wn", "bwn_gain")
INITS = ("torch_default", "he")
# model config keys that configure the conv reparametrization (read by ``weight_norm_options``), not the model
WEIGHT_NORM_KEYS = ("weight_norm", "bwn_init", "bwn_renorm")
# spellings accepted for "none" (YAML false/off/null)
_NONE_ALIASES = {None, False, "none", "false", "off", "null", ""}


class BoundedWeightNorm(nn.Module):
    """w_c = rho * v_c / ||v_c||_2, rho a fixed buffer (mean initial per-channel norm of the layer); with ``renorm``
    v is stored with unit channels (``right_inverse``) and kept there by ``renormalize_direction``."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12, renorm: bool = True):
        super().__init__()
        self.eps, self.renorm = eps, bool(renorm)
        with torch.no_grad():
            rho = channel_norms(weight, keepdim=True).mean().to(weight.dtype)
        self.register_buffer("rho", rho)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        n = channel_norms(v, keepdim=True).clamp_min(self.eps)
        return (v * (self.rho / n).to(v.dtype))

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """The stored v for an effective weight w: w_c / ||w_c|| with ``renorm``, else w itself."""
        if not self.renorm:
            return w
        return w / channel_norms(w, keepdim=True).clamp_min(self.eps).to(w.dtype)

    def extra_repr(self) -> str:
        return f"rho={float(self.rho):.4g}, renorm={self.renorm}"


@torch.no_grad()
def renormalize_direction(module: nn.Module, args) -> None:
    """Forward pre-hook of a ``bwn`` conv with ``renorm``: v_c <- v_c / ||v_c|| in place (training mode only)."""
    if module.training:
        v = module.parametrizations.weight.original
        v.div_(channel_norms(v, keepdim=True).clamp_min(module.parametrizations.weight[0].eps).to(v.dtype))


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
        raise choice_error("model.weight_norm", kind, KINDS)
    return kind


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every conv layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def weight_norm_options(model_cfg) -> dict:
    """``apply_weight_norm``'s options from the model config: ``init`` (``model.bwn_init``) and ``renorm``
    (``model.bwn_renorm``) where set; absent keys leave the kind's defaults."""
    opts = {}
    if model_cfg.get("bwn_init") is not None:
        opts["init"] = model_cfg.get("bwn_init")
    if model_cfg.get("bwn_renorm") is not None:
        opts["renorm"] = model_cfg.get("bwn_renorm")
    return opts


def _check_init(init, kind: str) -> str:
    if init is None:
        return "torch_default" if kind in ("bwn", "bwn_gain") else "he"
    if init not in INITS:
        raise choice_error("model.bwn_init", init, INITS)
    return init


def torch_default_conv_weight_(conv: nn.modules.conv._ConvNd) -> None:
    """Redraw ``conv.weight`` with PyTorch's default conv initialization (``reset_parameters``); the bias is kept."""
    bias = None if conv.bias is None else conv.bias.detach().clone()
    conv.reset_parameters()
    if bias is not None:
        with torch.no_grad():
            conv.bias.copy_(bias)


def apply_weight_norm(model: nn.Module, kind="none", init: str | None = None, renorm: bool = True) -> nn.Module:
    """Parametrize the weight of every conv layer of ``model`` with ``kind``, the initial weight per ``init``
    (torch_default | he; default torch_default for bwn / bwn_gain, he for wn), ``renorm`` for bwn (see the module
    docstring); returns ``model`` (modified in place). ``model.fc`` and other Linear layers are left alone."""
    kind = _check_kind(kind)
    if kind == "none":
        return model
    init = _check_init(init, kind)
    if not isinstance(renorm, bool):
        raise ConfigError(f"model.bwn_renorm must be true or false, got {renorm!r}")
    for name, conv in conv_layers(model):
        if parametrize.is_parametrized(conv, "weight"):
            raise ConfigError(f"conv layer {name!r} already has a weight parametrization; apply weight_norm once")
        if init == "torch_default":
            torch_default_conv_weight_(conv)
        if kind == "wn":
            torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=0)
        elif kind == "bwn":
            parametrize.register_parametrization(conv, "weight", BoundedWeightNorm(conv.weight.detach(),
                                                                                   renorm=renorm))
            if renorm:
                conv.register_forward_pre_hook(renormalize_direction)
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
    ``min_channel_norm``/``max_channel_norm`` and, where the layer has one, ``rho`` and ``renorm`` (bwn) or
    ``gain_norm`` (||g||_2 of the learned gains, wn/bwn_gain, before bwn_gain's rescaling) and ``g0_norm``
    (bwn_gain)."""
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
            row["renorm"] = bool(conv.parametrizations.weight[0].renorm)
        elif kind in ("wn", "bwn_gain"):
            row["gain_norm"] = float(torch.linalg.vector_norm(conv.parametrizations.weight.original0.float()))
            if kind == "bwn_gain":
                row["g0_norm"] = float(conv.parametrizations.weight[0].g0_norm)
        rows.append(row)
    return rows
