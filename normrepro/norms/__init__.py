"""Normalization layers by name (issue 3): ``build_norm(name, num_features, **options) -> nn.Module``.

Names (``registry.NORMS``, the one table): l2 (torch BatchNorm; impl="lp" for this package's own L2), l1, linf,
topk, topk_ghost (the authors' ghost Top-k), mean (mean-only), none. Options: see ``registry.py``.
Models receive ``norm_factory(name, **options)`` and call ``norm_layer(num_features)``; any model's torch batch
norms are swapped with ``convert_norms(model, name, **options)``.

Modules: registry (names, options, classes), layers (nn.Modules), ops (the registered torch operators), compose
(forward/backward from primitives), formulas (each norm's formula, once), backends (which primitives run:
``NORMREPRO_NORM_BACKEND``), prims_torch / prims_native (+ the Triton module) (the primitives), sync (collectives,
synchronized layers), convert (convert_norms, split_norm_params), layout, constants.
"""
from __future__ import annotations

from normrepro.norms.backends import BACKENDS, backend, get_backend, set_backend
from normrepro.norms.constants import C_L1, c_linf
from normrepro.norms.convert import convert_norms, split_norm_params
from normrepro.norms.functional import lp_batch_norm, mean_batch_norm
from normrepro.norms.layers import (
    BatchNorm,
    GhostTopkBatchNorm,
    L1BatchNorm,
    L2LpBatchNorm,
    LinfBatchNorm,
    LpBatchNorm,
    MeanBatchNorm,
    NoNorm,
    NormLayer,
    StatsNorm,
    TopkBatchNorm,
)
from normrepro.norms.registry import (
    L2_IMPLS,
    NORM_NAMES,
    NORM_OPTIONS,
    NORMS,
    build_norm,
    is_norm_layer,
    norm_factory,
)
from normrepro.norms.sync import convert_sync_norms, is_sync_norm

__all__ = ["build_norm", "norm_factory", "is_norm_layer", "NORMS", "NORM_NAMES", "NORM_OPTIONS", "L2_IMPLS", "C_L1",
           "c_linf", "BatchNorm", "GhostTopkBatchNorm", "L1BatchNorm", "L2LpBatchNorm", "LinfBatchNorm",
           "LpBatchNorm", "MeanBatchNorm", "NoNorm", "NormLayer", "StatsNorm", "TopkBatchNorm", "lp_batch_norm",
           "mean_batch_norm", "BACKENDS", "set_backend", "get_backend", "backend", "convert_sync_norms",
           "is_sync_norm", "convert_norms", "split_norm_params"]
