"""Normalization layers: torch BatchNorm (``l2``), Lp batch norms (``l1``, ``linf``, ``topk``, ``l2`` with
impl="lp"), mean-only batch norm (``mean``) and the identity (``none``).

Every layer accepts (N, C) and (N, C, H, W) input, contiguous or channels_last, keeps the layout, and has:
``norm_name``, ``stats_dtype`` (None = the input's dtype), ``last_max_dev`` (largest |x - mu| of the last
training batch as a detached 0-dim tensor, or None when not tracked) and ``is_norm_layer = True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError
from normrepro.norms import functional as NF
from normrepro.norms.constants import C_L1, TOPK_DEFAULT


def _autocast_off(x: torch.Tensor):
    """Our layers pick their dtypes themselves (input dtype or stats_dtype), like torch's batch_norm
    which autocast leaves in the input dtype."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return _NULL


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def check_input(module: nn.Module, x: torch.Tensor) -> None:
    """Rank 2 or 4, the module's channel count, and more than one value per channel in training."""
    if x.dim() not in (2, 4):
        raise ConfigError(f"{module.norm_name} norm: expected a 2-D (N, C) or 4-D (N, C, H, W) input, "
                          f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[1] != module.num_features:
        raise ConfigError(f"{module.norm_name} norm: input has {x.shape[1]} channels (shape {tuple(x.shape)}), "
                          f"the layer was built for num_features={module.num_features}")
    if module.training and x.numel() // max(x.shape[1], 1) <= 1:
        raise ConfigError(f"{module.norm_name} norm: training needs more than 1 value per channel "
                          f"(n = N*H*W), got input shape {tuple(x.shape)}")


def _param_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


class NormLayer:
    """Mixin marking normalization layers (see ``normrepro.norms.is_norm_layer``)."""
    is_norm_layer = True
    norm_name = "?"
    stats_dtype: torch.dtype | None = None
    last_max_dev: torch.Tensor | None = None


class _RunningStats(NormLayer, nn.Module):
    """Shared parts: options, affine parameters, running buffers and their update."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool,
                 stats_dtype: torch.dtype | None, track_max_dev: bool, weight: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.stats_dtype = stats_dtype
        self.track_max_dev = track_max_dev
        self.last_max_dev = None
        if affine and weight:
            self.weight = nn.Parameter(torch.ones(num_features))
        else:
            self.register_parameter("weight", None)
        if affine:
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _factor(self) -> float:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as torch's BatchNorm with momentum=None
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    @staticmethod
    def _ema(buf: torch.Tensor, value: torch.Tensor, m: float) -> None:
        buf.mul_(1.0 - m).add_(value.to(buf.dtype), alpha=m)

    def _record_max_dev(self, max_dev: torch.Tensor) -> None:
        self.last_max_dev = max_dev.detach().amax() if max_dev.numel() else None

    def extra_repr(self) -> str:
        parts = [f"norm={self.norm_name}", str(self.num_features)]
        if hasattr(self, "k"):
            parts.append(f"k={self.k}")
        if self.name_has_eps():
            parts.append(f"eps={self.eps}")
        parts += [f"momentum={self.momentum}", f"affine={self.affine}"]
        if self.stats_dtype is not None:
            parts.append(f"stats_dtype={str(self.stats_dtype).replace('torch.', '')}")
        if self.track_max_dev:
            parts.append("track_max_dev=True")
        return ", ".join(parts)

    def name_has_eps(self) -> bool:
        return True


class LpBatchNorm(_RunningStats):
    """Batch norm with an Lp scale (``stats_cls``); buffers running_mean (starts at 0) and running_scale
    (the scale estimate without eps, starts at 1). Eval: y = gamma (x - running_mean) / (running_scale + eps) + beta.
    """
    stats_cls: type = NF._Stats

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, eps, momentum, affine, stats_dtype, track_max_dev)
        self.register_buffer("running_scale", torch.ones(num_features))

    def make_stats(self) -> NF._Stats:
        """The statistics object of this layer, rebuilt only when stats_cls, eps, k or track_max_dev change.
        (A synchronized batch norm can set ``layer.stats_cls`` to a subclass whose ``batch_stats`` and
        ``grad_sums`` all-reduce; the fused CPU kernels then step aside, see ``functional.fused_kind``.)"""
        key = (self.stats_cls, self.eps, self.track_max_dev, getattr(self, "k", None))
        cached = self.__dict__.get("_stats_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._new_stats())
            self.__dict__["_stats_cache"] = cached
        return cached[1]

    def _new_stats(self) -> NF._Stats:
        return self.stats_cls(eps=self.eps, track_max_dev=self.track_max_dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        with _autocast_off(x):
            if self.training:
                y, mu, f, max_dev = NF.LpBatchNormFunction.apply(x, self.weight, self.bias, self.make_stats(), cd)
                with torch.no_grad():
                    m = self._factor()
                    self._ema(self.running_mean, mu, m)
                    self._update_scale(f, x, m)
                self._record_max_dev(max_dev)
                return y
            return self._eval(x, cd)

    def _update_scale(self, f: torch.Tensor, x: torch.Tensor, m: float) -> None:
        self._ema(self.running_scale, f, m)

    def _eval_scale(self, cd: torch.dtype) -> torch.Tensor:
        return self.running_scale.to(cd) + self.eps

    def _eval(self, x: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
        xc = x if x.dtype == cd else x.to(cd)
        scale = self._eval_scale(cd).reciprocal()
        if self.weight is not None:
            scale = self.weight.to(cd) * scale
        mean = self.running_mean.to(cd)
        if cd in (torch.float32, torch.float64):
            shift = -mean * scale
            if self.bias is not None:
                shift = shift + self.bias.to(cd)
            y = torch.addcmul(_param_view(shift, xc), xc, _param_view(scale, xc))
        else:  # subtract first: x*scale - mean*scale cancels badly in half precision
            y = (xc - _param_view(mean, xc)) * _param_view(scale, xc)
            if self.bias is not None:
                y = y + _param_view(self.bias.to(cd), xc)
        return y if y.dtype == x.dtype else y.to(x.dtype)


class L1BatchNorm(LpBatchNorm):
    """s = l1_scale * sqrt(pi/2) * mean|x - mu| + eps (l1_scale = 1: the paper's constant; 1/4 and 4 are its
    ablation, docs/paper.md §1.3)."""
    norm_name = "l1"
    stats_cls = NF.L1Stats

    def __init__(self, num_features: int, l1_scale: float = 1.0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.l1_scale = float(l1_scale)

    def make_stats(self) -> NF._Stats:
        stats = super().make_stats()
        if stats.c != self.l1_scale * C_L1:  # the cache key does not know l1_scale
            self.__dict__.pop("_stats_cache", None)
            stats = super().make_stats()
        return stats

    def _new_stats(self) -> NF._Stats:
        return self.stats_cls(eps=self.eps, track_max_dev=self.track_max_dev, c=self.l1_scale * C_L1)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", l1_scale={self.l1_scale:g}" if self.l1_scale != 1.0 else "")


class TopkBatchNorm(LpBatchNorm):
    """s = C(n) * mean of the k largest |x - mu| + eps, C(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n))."""
    norm_name = "topk"
    stats_cls = NF.TopkStats

    def __init__(self, num_features: int, k: int = TOPK_DEFAULT, **kwargs):
        super().__init__(num_features, **kwargs)
        self.k = k

    def _new_stats(self) -> NF._Stats:
        return self.stats_cls(eps=self.eps, track_max_dev=True, k=self.k)

    def _record_max_dev(self, max_dev: torch.Tensor) -> None:  # free: the top-1 deviation
        self.last_max_dev = max_dev.detach().amax()


class LinfBatchNorm(TopkBatchNorm):
    """s = C(n) * max|x - mu| + eps (Top-k with k = 1)."""
    norm_name = "linf"

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, k=1, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", k=1", "")


class L2LpBatchNorm(LpBatchNorm):
    """Standard batch norm through this package's own path (``l2`` with impl="lp"): squares and sqrt in the
    statistics dtype. Buffers as torch's BatchNorm (running_mean, running_var unbiased, num_batches_tracked),
    so its state_dict loads into impl="torch" and back."""
    norm_name = "l2"
    stats_cls = NF.L2Stats

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        del self.running_scale
        self.register_buffer("running_var", torch.ones(num_features))

    def _update_scale(self, f: torch.Tensor, x: torch.Tensor, m: float) -> None:
        n = x.numel() // x.shape[1]
        self._ema(self.running_var, f * (n / (n - 1)), m)

    def _eval_scale(self, cd: torch.dtype) -> torch.Tensor:
        return (self.running_var.to(cd) + self.eps).sqrt()

    def extra_repr(self) -> str:
        return super().extra_repr().replace("norm=l2", "norm=l2, impl=lp")


class MeanBatchNorm(_RunningStats):
    """Mean-only batch norm: y = x - mu + beta (no scaling), for bounded weight normalization.
    Buffers running_mean, num_batches_tracked; eval: y = x - running_mean + beta."""
    norm_name = "mean"

    def __init__(self, num_features: int, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, 0.0, momentum, affine, stats_dtype, track_max_dev, weight=False)

    def name_has_eps(self) -> bool:
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        with _autocast_off(x):
            if self.training:
                y, mu = NF.MeanBatchNormFunction.apply(x, self.bias, cd)
                with torch.no_grad():
                    self._ema(self.running_mean, mu, self._factor())
                    if self.track_max_dev:
                        xc = x.detach().to(cd)
                        self.last_max_dev = (xc - _param_view(mu, xc)).abs().amax()
                return y
            xc = x if x.dtype == cd else x.to(cd)
            mu = self.running_mean.to(cd)
            shift = mu if self.bias is None else mu - self.bias.to(cd)
            y = xc - _param_view(shift, xc)
            return y if y.dtype == x.dtype else y.to(x.dtype)


class BatchNorm(NormLayer, _BatchNorm):
    """torch's batch norm (``l2``, impl="torch") for (N, C) and (N, C, H, W) input: identical to
    nn.BatchNorm1d/2d. With stats_dtype set (e.g. float32 for float16 input) it runs in that dtype and
    casts the output back."""
    norm_name = "l2"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 stats_dtype: torch.dtype | None = None, track_max_dev: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.stats_dtype = stats_dtype
        self.track_max_dev = track_max_dev
        self.last_max_dev = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        check_input(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if self.training and self.track_max_dev:
            with torch.no_grad():
                xs = x.detach().to(self.stats_dtype or x.dtype)
                dims = (0,) if x.dim() == 2 else (0, 2, 3)
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
        with _autocast_off(x):
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
