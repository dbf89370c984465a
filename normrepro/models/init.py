"""Initializations by name (``model.init``), applied by ``build_model`` after the model is constructed.

- ``he`` (default): :func:`init_weights`, torchvision's: kaiming-normal convs (fan_out, relu), conv bias 0, norm
  gain 1 and bias 0; Linear layers keep PyTorch's default. Also the authors' ResNets (their ``init_model``:
  N(0, 2 / (k·k·C_out)) convs, BN γ = 1, β = 0, the classifier untouched).
- ``torch_default``: :func:`torch_default_init`, what torch 0.3 (the authors' version, their VGG-11 has no init code)
  did in the layers' ``reset_parameters``: conv weight and bias ~ U(±1/√fan_in), fan_in = C_in·k·k (so ‖w_c‖² ≈
  1/3); Linear weight and bias ~ U(±1/√in_features); norm gain γ ~ U(0, 1) and bias β = 0 (``_BatchNorm`` until
  torch 1.0 used ``weight.uniform_()``; pytorch/pytorch#12259 changed it to ones). The layers are drawn in module
  order, as construction did; the random stream itself cannot match theirs (other draws come first here).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from normrepro.errors import choice_error

INITS = ("he", "torch_default")


def is_norm_layer(module: nn.Module) -> bool:
    """True for normalization layers (``normrepro.norms.is_norm_layer``)."""
    from normrepro.norms import is_norm_layer as _is_norm

    return _is_norm(module)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs as torchvision; norm gains 1 and biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif is_norm_layer(m):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def torch_default_init(model: nn.Module) -> None:
    """torch 0.3's defaults: conv and Linear weight and bias ~ U(±1/√fan_in); norm γ ~ U(0, 1), β = 0."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            bound = 1.0 / math.sqrt(m.in_channels * math.prod(m.kernel_size))  # torch 0.3: C_in, not C_in / groups
            _uniform(m, -bound, bound)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            _uniform(m, -bound, bound)
        elif is_norm_layer(m):
            if getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.0, 1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()


def _uniform(m: nn.Module, low: float, high: float) -> None:
    """The module's weight, then its bias (if any), drawn from U(low, high)."""
    m.weight.uniform_(low, high)
    if m.bias is not None:
        m.bias.uniform_(low, high)


def initialize(model: nn.Module, init: str = "he") -> None:
    """Initialize ``model`` in place by ``init`` (one of INITS); ConfigError for another name."""
    if init not in INITS:
        raise choice_error("model.init", init, INITS)
    (init_weights if init == "he" else torch_default_init)(model)
