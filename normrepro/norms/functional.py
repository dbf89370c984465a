"""Functional forms of the norms (training-mode batch statistics, no running buffers) and the layout helpers.

    y = lp_batch_norm(x, weight, bias, "l1")          # also "topk" (k=...), "linf", "l2"
    y = mean_batch_norm(x, bias)

They call the registered ops (``ops.py``), so they are differentiable and opaque to torch.compile.
"""
from __future__ import annotations

import torch

from normrepro.norms import ops
from normrepro.norms.constants import C_L1, TOPK_DEFAULT
from normrepro.norms.formulas import LpSpec
from normrepro.norms.layout import dense, geometry, is_channels_last, memory_format, view3

__all__ = ["lp_batch_norm", "mean_batch_norm", "dense", "geometry", "is_channels_last", "memory_format", "view3"]

Tensor = torch.Tensor


def lp_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, kind: str = "l1", eps: float = 1e-5,
                  k: int = TOPK_DEFAULT, c: float = C_L1, stats_dtype: torch.dtype | None = None) -> Tensor:
    """gamma * (x - mu) / s + beta with the batch statistics of x (N, C, ...): s = c * mean|x - mu| + eps (l1),
    C(n) * mean of the k largest |x - mu| + eps (topk; linf: k = 1), sqrt(mean (x - mu)^2 + eps) (l2)."""
    if kind == "linf":
        kind, k = "topk", 1
    spec = LpSpec(kind=kind, eps=float(eps), c=float(c), k=int(k))
    return ops.lp_norm(x, weight, bias, None, spec, stats_dtype or x.dtype)[0]


def mean_batch_norm(x: Tensor, bias: Tensor | None, stats_dtype: torch.dtype | None = None) -> Tensor:
    """x - mean(x) + beta per channel, with the batch mean of x (N, C, ...)."""
    return ops.mean_norm(x, bias, stats_dtype or x.dtype)[0]
