"""Normalization layers by name (issue 3): ``build_norm(name, num_features, **options) -> nn.Module``.

Names: l2 (torch BatchNorm; impl="lp" for this package's own L2), l1, linf, topk, mean (mean-only), none.
Options (each norm accepts the ones listed in ``NORM_OPTIONS``; any other raises ConfigError):
    eps (1e-5), momentum (0.1, PyTorch's convention; None = cumulative average), affine (True),
    k (Top-k, 10), stats_dtype (None = the input's dtype, or e.g. torch.float32), impl (l2: "torch" | "lp"),
    track_max_dev (False; record the largest |x - mu| of the last training batch in ``last_max_dev``).
Models receive ``norm_factory(name, **options)`` and call ``norm_layer(num_features)``.
"""
from __future__ import annotations

import functools
import numbers

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError, choice_error
from normrepro.norms.constants import C_L1, c_linf
from normrepro.norms.functional import backend, get_backend, lp_batch_norm, set_backend
from normrepro.norms.layers import (
    BatchNorm,
    L1BatchNorm,
    L2LpBatchNorm,
    LinfBatchNorm,
    LpBatchNorm,
    MeanBatchNorm,
    NoNorm,
    NormLayer,
    TopkBatchNorm,
)
from normrepro.norms.sync import convert_sync_norms, is_sync_norm

__all__ = ["build_norm", "norm_factory", "is_norm_layer", "NORM_NAMES", "NORM_OPTIONS", "L2_IMPLS", "C_L1",
           "c_linf", "BatchNorm", "L1BatchNorm", "L2LpBatchNorm", "LinfBatchNorm", "LpBatchNorm", "MeanBatchNorm",
           "NoNorm", "NormLayer", "TopkBatchNorm", "lp_batch_norm", "set_backend", "get_backend", "backend",
           "convert_sync_norms", "is_sync_norm"]

NORM_NAMES = ("l2", "l1", "linf", "topk", "mean", "none")
L2_IMPLS = ("torch", "lp")

_COMMON = ("eps", "momentum", "affine", "stats_dtype", "track_max_dev")
NORM_OPTIONS: dict[str, tuple[str, ...]] = {
    "l2": _COMMON + ("impl",),
    "l1": _COMMON + ("l1_scale",),
    "linf": _COMMON,
    "topk": _COMMON + ("k",),
    "mean": ("momentum", "affine", "stats_dtype", "track_max_dev"),
    "none": (),
}
_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _check_name(name) -> str:
    if name not in NORM_NAMES:
        raise choice_error("norm", name, NORM_NAMES)
    return name


def _stats_dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str):
        name = value.replace("torch.", "")
        if name in ("null", "none", "None"):
            return None
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
    raise choice_error("norm stats_dtype", value, ("None",) + _FLOAT_DTYPES)


def _validate(name: str, options: dict) -> dict:
    """Checked and normalized options for norm ``name`` (defaults not filled in)."""
    allowed = NORM_OPTIONS[name]
    out = {}
    for key, value in options.items():
        if key not in allowed:
            accepted = ", ".join(allowed) if allowed else "none"
            raise ConfigError(f"norm {name!r} has no option {key!r}; its options: {accepted}")
        if key == "eps":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ConfigError(f"norm {name!r}: eps must be a number >= 0, got {value!r}")
            value = float(value)
        elif key == "momentum":
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or not 0 <= value <= 1):
                raise ConfigError(f"norm {name!r}: momentum must be in [0, 1] or None, got {value!r}")
            value = None if value is None else float(value)
        elif key in ("affine", "track_max_dev"):
            if not isinstance(value, bool):
                raise ConfigError(f"norm {name!r}: {key} must be true or false, got {value!r}")
        elif key == "k":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"norm {name!r}: k must be an integer >= 1, got {value!r}")
            value = int(value)
        elif key == "stats_dtype":
            value = _stats_dtype(value)
        elif key == "l1_scale":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ConfigError(f"norm {name!r}: l1_scale must be a number > 0, got {value!r}")
            value = float(value)
        elif key == "impl":
            if value not in L2_IMPLS:
                raise choice_error("l2 impl", value, L2_IMPLS)
        out[key] = value
    return out


def build_norm(name: str, num_features: int, **options) -> nn.Module:
    """A normalization layer ``name`` (one of NORM_NAMES) for ``num_features`` channels."""
    _check_name(name)
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
        raise ConfigError(f"norm {name!r}: num_features must be an integer >= 1, got {num_features!r}")
    num_features = int(num_features)
    opts = _validate(name, options)
    if name == "none":
        return NoNorm(num_features)
    if name == "l2":
        impl = opts.pop("impl", "torch")
        return (BatchNorm if impl == "torch" else L2LpBatchNorm)(num_features, **opts)
    if name == "mean":
        return MeanBatchNorm(num_features, **opts)
    cls = {"l1": L1BatchNorm, "linf": LinfBatchNorm, "topk": TopkBatchNorm}[name]
    return cls(num_features, **opts)


def norm_factory(name: str, **options):
    """``functools.partial(build_norm, name, **options)``; the name and options are checked now."""
    _check_name(name)
    _validate(name, options)
    return functools.partial(build_norm, name, **options)


def is_norm_layer(module) -> bool:
    """True for this package's normalization layers and torch's batch norms (_BatchNorm)."""
    return isinstance(module, _BatchNorm) or getattr(type(module), "is_norm_layer", False) is True

