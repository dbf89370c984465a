"""Normalization layers: torch BatchNorm (``l2``), Lp batch norms (``l1``, ``linf``, ``topk``, ``topk_ghost``,
``l2`` with impl="lp"), mean-only batch norm (``mean``) and the identity (``none``).

Every layer accepts (N, C) to (N, C, D, H, W) input, contiguous or channels-last, keeps the layout, and has:
``norm_name``, ``stats_dtype`` (None = the input's dtype), ``last_max_dev`` (largest |x - mu| of the last
training batch as a detached 0-dim tensor, or None when not tracked) and ``is_norm_layer = True``.
The batch norms are ``torch.nn.modules.batchnorm._BatchNorm`` subclasses with its interface
(``reset_running_stats``, ``reset_parameters``, ``momentum=None`` cumulative averaging), so torch's tools that look
for batch norms (``torch.optim.swa_utils.update_bn``, FSDP's mixed-precision exemption) treat them as such.
Training runs the registered ops of ``ops.py``; eval uses the running statistics (torch ops).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError
from normrepro.norms import formulas as FM
from normrepro.norms import ops
from normrepro.norms.base import NormLayer, StatsNorm, autocast_off, check_input
from normrepro.norms.constants import C_L1, TOPK_DEFAULT
from normrepro.norms.layout import channel_view

__all__ = ["NormLayer", "StatsNorm", "autocast_off", "check_input", "LpBatchNorm", "L1BatchNorm", "TopkBatchNorm",
           "LinfBatchNorm", "GhostTopkBatchNorm", "check_beta", "L2LpBatchNorm", "MeanBatchNorm", "BatchNorm",
           "NoNorm"]

Tensor = torch.Tensor


class LpBatchNorm(StatsNorm):
    """Batch norm with an Lp scale s = f + eps (``kind``: see ``formulas.py``); buffers running_mean (starts at 0)
    and running_scale (f, starts at 1). Eval: y = gamma (x - running_mean) / (running_scale + eps) + beta."""
    kind = "?"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, eps, momentum, affine, stats_dtype, track_max_dev)
        self.register_buffer("running_scale", torch.ones(num_features))

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_scale = 1, num_batches_tracked = 0."""
        super().reset_running_stats()
        self.running_scale.fill_(1.0)

    def spec(self) -> FM.LpSpec:
        """This layer's statistics (kind, eps, constants) for the ops."""
        return FM.LpSpec(kind=self.kind, eps=float(self.eps), want_max=bool(self.track_max_dev))

    def _history(self) -> Tensor | None:
        return None

    def _batch_norm(self, x: Tensor, cd: torch.dtype) -> tuple[Tensor, ...]:
        """``ops.lp_norm``'s outputs for x (a synchronized layer inserts its collectives here)."""
        return ops.lp_norm(x, self.weight, self.bias, self._history(), self.spec(), cd)

    def forward(self, x: Tensor) -> Tensor:
        """Training: y = gamma (x - mu) / s + beta with batch statistics, running averages updated; eval: the
        running statistics."""
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        with autocast_off(x):
            if not self.training:
                return self._eval(x, cd)
            y, mu, f, _s, _aux, _sel, max_dev, history = self._batch_norm(x, cd)
            with torch.no_grad():
                m = self._factor()
                self._ema(self.running_mean, mu, m)
                self._update_scale(f, x, m)
                if history is not None and history.numel():
                    self._history().copy_(history)
            self._record_max_dev(max_dev)
            return y

    def _count(self, x: Tensor):
        """n, the number of values per channel of the batch (a synchronized layer: over all processes)."""
        return x.numel() // x.shape[1]

    def _update_scale(self, f: Tensor, x: Tensor, m) -> None:
        self._ema(self.running_scale, f, m)

    def _eval_scale(self, cd: torch.dtype) -> Tensor:
        return self.running_scale.to(cd) + self.eps

    def _eval(self, x: Tensor, cd: torch.dtype) -> Tensor:
        xc = x if x.dtype == cd else x.to(cd)
        scale = self._eval_scale(cd).reciprocal()
        if self.weight is not None:
            scale = self.weight.to(cd) * scale
        mean = self.running_mean.to(cd)
        if cd in (torch.float32, torch.float64):
            shift = -mean * scale
            if self.bias is not None:
                shift = shift + self.bias.to(cd)
            y = torch.addcmul(channel_view(shift, xc), xc, channel_view(scale, xc))
        else:  # subtract first: x*scale - mean*scale cancels badly in half precision
            y = (xc - channel_view(mean, xc)) * channel_view(scale, xc)
            if self.bias is not None:
                y = y + channel_view(self.bias.to(cd), xc)
        return y if y.dtype == x.dtype else y.to(x.dtype)


class L1BatchNorm(LpBatchNorm):
    """s = l1_scale * sqrt(pi/2) * mean|x - mu| + eps (l1_scale = 1: the paper's constant; 1/4 and 4 are its
    ablation, docs/paper.md §1.3)."""
    norm_name = "l1"
    kind = "l1"

    def __init__(self, num_features: int, l1_scale: float = 1.0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.l1_scale = float(l1_scale)

    def spec(self) -> FM.LpSpec:
        """l1 with c = l1_scale * sqrt(pi/2)."""
        return FM.LpSpec(kind="l1", eps=float(self.eps), c=self.l1_scale * C_L1, want_max=bool(self.track_max_dev))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", l1_scale={self.l1_scale:g}" if self.l1_scale != 1.0 else "")


class TopkBatchNorm(LpBatchNorm):
    """s = C(n) * mean of the k largest |x - mu| + eps, C(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n))."""
    norm_name = "topk"
    kind = "topk"

    def __init__(self, num_features: int, k: int = TOPK_DEFAULT, **kwargs):
        super().__init__(num_features, **kwargs)
        self.k = k

    def spec(self) -> FM.LpSpec:
        """topk with this layer's k (capped at n when the batch has fewer values)."""
        return FM.LpSpec(kind="topk", eps=float(self.eps), k=int(self.k))

    def _record_max_dev(self, max_dev: Tensor | None) -> None:  # free: the top-1 deviation
        self.last_max_dev = max_dev.detach().amax()


class LinfBatchNorm(TopkBatchNorm):
    """s = C(n) * max|x - mu| + eps (Top-k with k = 1)."""
    norm_name = "linf"

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, k=1, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", k=1", "")


def check_beta(beta) -> float:
    """The ghost history weight beta as a float in (0, 1), else a ConfigError."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 < beta < 1.0:
        raise ConfigError(f"norm 'topk_ghost': beta must be a number in (0, 1), got {beta!r}")
    return float(beta)


class GhostTopkBatchNorm(TopkBatchNorm):
    """The authors' ghost Top-k ("Top10"): a history h of the top-k mean T, h <- beta*h + (1 - beta)*T (detached, h
    starts at 0, buffer ``topk_history``), s = C(n)*h + eps, so s = C(n)*(beta*h_old + (1 - beta)*T) + eps and the
    gradient flows through (1 - beta)*T. ``ghost_bug=True``: their code's h <- C(n)*(beta*h + (1 - beta)*T),
    s = h + eps (C(n) applied again every step). Running statistics as Top-k: running_scale follows s - eps."""
    norm_name = "topk_ghost"

    def __init__(self, num_features: int, k: int = TOPK_DEFAULT, beta: float = 0.75, ghost_bug: bool = False,
                 **kwargs):
        super().__init__(num_features, k=k, **kwargs)
        self.beta = check_beta(beta)
        self.ghost_bug = bool(ghost_bug)
        self.register_buffer("topk_history", torch.zeros(num_features))

    def spec(self) -> FM.LpSpec:
        """topk with the history weight beta and the ghost_bug switch."""
        return FM.LpSpec(kind="topk", eps=float(self.eps), k=int(self.k), beta=self.beta, ghost_bug=self.ghost_bug)

    def _history(self) -> Tensor:
        return self.topk_history

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta={self.beta:g}" + (", ghost_bug=True" if self.ghost_bug else "")


class L2LpBatchNorm(LpBatchNorm):
    """Standard batch norm through this package's own path (``l2`` with impl="lp"): squares and sqrt in the
    statistics dtype. Buffers as torch's BatchNorm (running_mean, running_var unbiased, num_batches_tracked),
    so its state_dict loads into impl="torch" and back."""
    norm_name = "l2"
    kind = "l2"

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        del self.running_scale
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        StatsNorm.reset_running_stats(self)
        self.running_var.fill_(1.0)

    def _update_scale(self, f: Tensor, x: Tensor, m) -> None:
        n = self._count(x)
        self._ema(self.running_var, f * (n / (n - 1)), m)

    def _eval_scale(self, cd: torch.dtype) -> Tensor:
        return (self.running_var.to(cd) + self.eps).sqrt()

    def extra_repr(self) -> str:
        return super().extra_repr().replace("norm=l2", "norm=l2, impl=lp")


class MeanBatchNorm(StatsNorm):
    """Mean-only batch norm: y = x - mu + beta (no scaling), for bounded weight normalization.
    Buffers running_mean, num_batches_tracked; eval: y = x - running_mean + beta."""
    norm_name = "mean"

    def __init__(self, num_features: int, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, 0.0, momentum, affine, stats_dtype, track_max_dev, weight=False)

    def name_has_eps(self) -> bool:
        """Mean-only BN has no eps."""
        return False

    def _batch_norm(self, x: Tensor, cd: torch.dtype) -> tuple[Tensor, ...]:
        """``ops.mean_norm``'s outputs (y, mu, max_dev) for x (a synchronized layer inserts its collectives)."""
        return ops.mean_norm(x, self.bias, cd, bool(self.track_max_dev))

    def forward(self, x: Tensor) -> Tensor:
        """y = x - mu + beta: mu the batch mean in training (running_mean updated), running_mean in eval."""
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        with autocast_off(x):
            if self.training:
                y, mu, max_dev = self._batch_norm(x, cd)
                with torch.no_grad():
                    self._ema(self.running_mean, mu, self._factor())
                self._record_max_dev(max_dev)
                return y
            xc = x if x.dtype == cd else x.to(cd)
            mu = self.running_mean.to(cd)
            shift = mu if self.bias is None else mu - self.bias.to(cd)
            y = xc - channel_view(shift, xc)
            return y if y.dtype == x.dtype else y.to(x.dtype)


class BatchNorm(NormLayer, _BatchNorm):
    """torch's batch norm (``l2``, impl="torch") for (N, C) to (N, C, D, H, W) input: identical to
    nn.BatchNorm1d/2d/3d. With stats_dtype set (e.g. float32 for float16 input) it runs in that dtype and
    casts the output back."""
    norm_name = "l2"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.stats_dtype = stats_dtype
        self.track_max_dev = track_max_dev
        self.last_max_dev = None

    def _check_input_dim(self, x: Tensor) -> None:
        check_input(self, x)

    def forward(self, x: Tensor) -> Tensor:
        """torch's batch norm (in stats_dtype when set), max|x - mu| recorded when tracked."""
        check_input(self, x)
        if self.training and self.track_max_dev:
            with torch.no_grad():
                xs = x.detach().to(self.stats_dtype or x.dtype)
                dims = (0, *range(2, x.dim()))
                self.last_max_dev = (xs - xs.mean(dims, keepdim=True)).abs().amax()
        cd = self.stats_dtype
        if cd is None or cd == x.dtype:
            return super().forward(x)
        # run torch's batch norm in the statistics dtype; buffers keep their own dtype
        if self.training:
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            m = 0.0
        rm, rv = self.running_mean, self.running_var
        rmc, rvc = rm.to(cd), rv.to(cd)
        w = self.weight.to(cd) if self.weight is not None else None
        b = self.bias.to(cd) if self.bias is not None else None
        with autocast_off(x):
            y = F.batch_norm(x.to(cd), rmc, rvc, w, b, self.training, m, self.eps)
        if self.training and rmc is not rm:
            with torch.no_grad():
                rm.copy_(rmc)
                rv.copy_(rvc)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        extra = f", stats_dtype={str(self.stats_dtype).replace('torch.', '')}" if self.stats_dtype else ""
        if self.track_max_dev:
            extra += ", track_max_dev=True"
        return "norm=l2, impl=torch, " + super().extra_repr() + extra


class NoNorm(NormLayer, nn.Identity):
    """``none``: the identity (keeps the slot of a normalization layer)."""
    norm_name = "none"

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.stats_dtype = None
        self.last_max_dev = None

    def extra_repr(self) -> str:
        return f"norm=none, {self.num_features}"
