"""The one table of norms: names, their options, layer classes (by impl) and synchronized versions, and the
factories built on it: ``build_norm(name, num_features, **options)`` and ``norm_factory(name, **options)``.

Options (each norm accepts those listed in its row; any other raises ConfigError):
    eps (1e-5), momentum (0.1, PyTorch's convention; None = cumulative average), affine (True),
    stats_dtype (None = the input's dtype, or e.g. torch.float32), track_max_dev (False; record the largest
    |x - mu| of the last training batch in ``last_max_dev``), k (Top-k, 10), l1_scale (1.0), impl (l2: "torch" |
    "lp"), beta (topk_ghost, 0.75, in (0, 1)), ghost_bug (topk_ghost, False: the authors' history update).
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError, choice_error
from normrepro.norms import layers as L
from normrepro.norms import sync as S


@dataclass(frozen=True)
class NormEntry:
    """One norm: its layer class per impl (the first is the default) with its synchronized class, its options."""
    impls: dict[str, tuple[type, type | None]]
    options: tuple[str, ...]
    summary: str


_COMMON = ("eps", "momentum", "affine", "stats_dtype", "track_max_dev")
_ONE = ""  # the impl key of norms with a single implementation

NORMS: dict[str, NormEntry] = {
    "l2": NormEntry({"torch": (L.BatchNorm, S.SyncBatchNorm), "lp": (L.L2LpBatchNorm, S.SyncL2LpBatchNorm)},
                    _COMMON + ("impl",), "sigma = sqrt(mean (x - mu)^2 + eps): torch's BatchNorm, or impl=lp"),
    "l1": NormEntry({_ONE: (L.L1BatchNorm, S.SyncL1BatchNorm)}, _COMMON + ("l1_scale",),
                    "s = l1_scale * sqrt(pi/2) * mean|x - mu| + eps"),
    "linf": NormEntry({_ONE: (L.LinfBatchNorm, S.SyncLinfBatchNorm)}, _COMMON, "s = C(n) * max|x - mu| + eps"),
    "topk": NormEntry({_ONE: (L.TopkBatchNorm, S.SyncTopkBatchNorm)}, _COMMON + ("k",),
                      "s = C(n) * mean of the k largest |x - mu| + eps"),
    "topk_ghost": NormEntry({_ONE: (L.GhostTopkBatchNorm, S.SyncGhostTopkBatchNorm)},
                            _COMMON + ("k", "beta", "ghost_bug"),
                            "s = C(n) * h + eps, h <- beta*h + (1 - beta) * mean of the k largest |x - mu|"),
    "mean": NormEntry({_ONE: (L.MeanBatchNorm, S.SyncMeanBatchNorm)},
                      ("momentum", "affine", "stats_dtype", "track_max_dev"), "y = x - mu + beta"),
    "none": NormEntry({_ONE: (L.NoNorm, None)}, (), "the identity"),
}

NORM_NAMES = tuple(NORMS)
NORM_OPTIONS: dict[str, tuple[str, ...]] = {name: e.options for name, e in NORMS.items()}
L2_IMPLS = tuple(NORMS["l2"].impls)
#: layer class -> its synchronized class (``sync.convert_sync_norms``)
SYNC_OF = {cls: sync for e in NORMS.values() for cls, sync in e.impls.values() if sync is not None}
_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


def check_name(name) -> str:
    """name itself when it is one of NORM_NAMES, else a ConfigError listing them."""
    if name not in NORMS:
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


def _number(name: str, key: str, value, ok, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
        raise ConfigError(f"norm {name!r}: {key} must be {what}, got {value!r}")
    return float(value)


def _check_option(name: str, key: str, value):
    if key == "eps":
        return _number(name, key, value, lambda v: v >= 0, "a number >= 0")
    if key == "momentum":
        return None if value is None else _number(name, key, value, lambda v: 0 <= v <= 1, "in [0, 1] or None")
    if key in ("affine", "track_max_dev", "ghost_bug"):
        if not isinstance(value, bool):
            raise ConfigError(f"norm {name!r}: {key} must be true or false, got {value!r}")
        return value
    if key == "k":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"norm {name!r}: k must be an integer >= 1, got {value!r}")
        return int(value)
    if key == "stats_dtype":
        return _stats_dtype(value)
    if key == "l1_scale":
        return _number(name, key, value, lambda v: v > 0, "a number > 0")
    if key == "beta":
        return L.check_beta(value)
    if key == "impl":
        if value not in L2_IMPLS:
            raise choice_error("l2 impl", value, L2_IMPLS)
        return value
    raise AssertionError(key)


def validate(name: str, options: dict) -> dict:
    """Checked and normalized options for norm ``name`` (defaults not filled in)."""
    allowed = NORMS[check_name(name)].options
    out = {}
    for key, value in options.items():
        if key not in allowed:
            accepted = ", ".join(allowed) if allowed else "none"
            raise ConfigError(f"norm {name!r} has no option {key!r}; its options: {accepted}")
        out[key] = _check_option(name, key, value)
    return out


def build_norm(name: str, num_features: int, **options) -> nn.Module:
    """A normalization layer ``name`` (one of NORM_NAMES) for ``num_features`` channels."""
    check_name(name)
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
        raise ConfigError(f"norm {name!r}: num_features must be an integer >= 1, got {num_features!r}")
    opts = validate(name, options)
    impls = NORMS[name].impls
    cls = impls[opts.pop("impl", next(iter(impls)))][0]
    return cls(int(num_features), **opts)


def norm_factory(name: str, **options):
    """``functools.partial(build_norm, name, **options)``; the name and options are checked now."""
    validate(name, options)
    return functools.partial(build_norm, name, **options)


def is_norm_layer(module) -> bool:
    """True for this package's normalization layers and torch's batch norms (_BatchNorm)."""
    return isinstance(module, _BatchNorm) or getattr(type(module), "is_norm_layer", False) is True
