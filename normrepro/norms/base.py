"""Shared parts of the norm layers: input checks, autocast handling, the ``NormLayer`` marker and ``StatsNorm``,
the ``_BatchNorm`` base of this package's batch norms (options, affine parameters, running averages)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError

Tensor = torch.Tensor


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def autocast_off(x: Tensor):
    """A context that disables autocast on x's device when it is on: the layers pick their dtypes themselves
    (input dtype or stats_dtype), like torch's batch_norm, which autocast leaves in the input dtype."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return _NULL


def check_input(module: nn.Module, x: Tensor) -> None:
    """Rank 2 to 5, the module's channel count, and more than one value per channel in training."""
    if not 2 <= x.dim() <= 5:
        raise ConfigError(f"{module.norm_name} norm: expected a 2-D (N, C) to 5-D (N, C, D, H, W) input, "
                          f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[1] != module.num_features:
        raise ConfigError(f"{module.norm_name} norm: input has {x.shape[1]} channels (shape {tuple(x.shape)}), "
                          f"the layer was built for num_features={module.num_features}")
    if module.training and x.numel() // max(x.shape[1], 1) <= 1:
        raise ConfigError(f"{module.norm_name} norm: training needs more than 1 value per channel "
                          f"(n = N*H*W), got input shape {tuple(x.shape)}")


class NormLayer:
    """Mixin marking normalization layers (see ``normrepro.norms.is_norm_layer``)."""
    is_norm_layer = True
    norm_name = "?"
    stats_dtype: torch.dtype | None = None
    last_max_dev: Tensor | None = None


class StatsNorm(NormLayer, _BatchNorm):
    """Base of this package's batch norms: options, affine parameters, running_mean and num_batches_tracked,
    their update running = (1 - m) * running + m * batch (m = momentum; None: 1 / num_batches_tracked)."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool,
                 stats_dtype: torch.dtype | None, track_max_dev: bool, weight: bool = True):
        nn.Module.__init__(self)  # _BatchNorm's interface, our own buffers (no running_var)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = True
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

    def reset_running_stats(self) -> None:
        """running_mean = 0, the scale buffer = 1, num_batches_tracked = 0."""
        self.running_mean.zero_()
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """``reset_running_stats()``, weight = 1, bias = 0."""
        self.reset_running_stats()
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def _check_input_dim(self, x: Tensor) -> None:
        check_input(self, x)

    def _factor(self):
        """This batch's weight m in the running averages (advances num_batches_tracked)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average, as torch's BatchNorm with momentum=None
            return self.num_batches_tracked.double().reciprocal()
        return self.momentum

    @staticmethod
    def _ema(buf: Tensor, value: Tensor, m) -> None:
        """buf <- (1 - m) * buf + m * value (as torch.lerp, one op)."""
        buf.lerp_(value.to(buf.dtype), m.to(buf.dtype) if isinstance(m, Tensor) else m)

    def _record_max_dev(self, max_dev: Tensor | None) -> None:
        self.last_max_dev = max_dev.detach().amax() if max_dev is not None and max_dev.numel() else None

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
        """Whether eps belongs in the repr (mean-only BN has none)."""
        return True
