"""Synchronized batch statistics for every norm (``norm.sync=true``): ``convert_sync_norms(model, group)``.

With sync on, mu and s are computed over the global batch (all ranks of the process group) and n is the
global count, so a model trained with DistributedDataParallel on W ranks, each given a slice of the batch,
follows the same trajectory as one process trained on the whole batch without sync.

Reductions (torch ops, one small collective per reduction: the mean first, then the scale; the native fused CPU
kernels step aside because ``functional.fused_kind`` does not recognize these subclasses):
    mean:  all-reduce of [sum x, count];           L2: all-reduce of sum (x - mu)^2
    L1:    all-reduce of [sum |x - mu|, sum sign(x - mu)]
    Top-k: all_gather of each rank's k largest |x - mu| candidates (signed) per channel, then the top-k of the
           union; each rank keeps the globally selected candidates that are its own (L-inf is k = 1)
    backward: all-reduce of [sum dy, sum dy*(x - mu), count] (``grad_sums``), so dx is the global gradient.
Gradients of weight/bias: each rank returns n_local/n * (global sum); summed over ranks (DDP's all-reduce) this
is the global sum, as with torch's SyncBatchNorm whose ranks return their local sums.

The layers are converted in place by changing their class to a ``Sync*`` subclass (parameters, buffers, hooks
and any optimizer that holds the parameters stay valid). torch's ``BatchNorm`` (l2, impl="torch") becomes
``SyncBatchNorm``: torch's synchronized kernels (those of ``nn.SyncBatchNorm``) on CUDA, this module's L2
statistics elsewhere or with stats_dtype/track_max_dev. (``nn.SyncBatchNorm.convert_sync_batchnorm`` itself is
used only for plain torch batch norms: DDP refuses ``nn.SyncBatchNorm`` in CPU modules and its kernels refuse CPU
tensors.)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError
from normrepro.norms import functional as NF
from normrepro.norms.constants import c_linf
from normrepro.norms.layers import (
    BatchNorm,
    L1BatchNorm,
    L2LpBatchNorm,
    LinfBatchNorm,
    MeanBatchNorm,
    NoNorm,
    TopkBatchNorm,
    _autocast_off,
    _param_view,
    check_input,
)

Tensor = torch.Tensor
_v = NF._v

__all__ = ["convert_sync_norms", "is_sync_norm", "SyncBatchNorm", "SyncL1BatchNorm", "SyncL2LpBatchNorm",
           "SyncLinfBatchNorm", "SyncTopkBatchNorm", "SyncMeanBatchNorm", "SyncL1Stats", "SyncL2Stats",
           "SyncTopkStats", "SyncMeanBatchNormFunction"]


# ------------------------------------------------------------------------------------------- collectives
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the all-reduced sums: at least float32 (a float16 count overflows at 65504)."""
    return torch.promote_types(dtype, torch.float32)


def _all_reduce_sums(parts: list[Tensor], count: int, group, dtype: torch.dtype) -> tuple[list[Tensor], Tensor]:
    """All-reduce (SUM) the per-channel vectors ``parts`` and the local count in one collective.
    Returns the global sums and the global count (a 0-dim tensor: no device sync), in ``dtype``'s
    accumulation dtype."""
    acc = _acc_dtype(dtype)
    buf = torch.cat([p.to(acc).reshape(-1) for p in parts] + [parts[0].new_full((1,), count, dtype=acc)])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    out, i = [], 0
    for p in parts:
        out.append(buf[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out, buf[-1]


def _all_max(t: Tensor, group) -> Tensor:
    t = t.contiguous()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def _local_max_dev(d: Tensor) -> Tensor:
    """Per-channel max |d| of a (A, C, B) tensor; 0 for an empty local batch."""
    if d.numel() == 0:
        return d.new_zeros(d.shape[1])
    return d.abs().amax((0, 2))


def global_mean(x3: Tensor, group) -> tuple[Tensor, Tensor]:
    """(per-channel mean over all ranks in x3's dtype, global count n as a 0-dim tensor) of a (A, C, B) view."""
    a, c, b = x3.shape
    (s,), n = _all_reduce_sums([x3.sum((0, 2), dtype=_acc_dtype(x3.dtype))], a * b, group, x3.dtype)
    return (s / n).to(x3.dtype), n


def global_count(x: Tensor, group) -> Tensor:
    """The global number of values per channel, sum over ranks of N*H*W (a 0-dim float64 tensor)."""
    t = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64, device=x.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t[0]


# ------------------------------------------------------------------------------------------- statistics
@dataclasses.dataclass(frozen=True)
class _SyncMixin:
    """All-reduced ``grad_sums``; ``group`` is the process group (None: the default group)."""
    group: Any = None

    def grad_sums(self, x3: Tensor, dy3: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
        a, c, b = x3.shape
        acc = _acc_dtype(x3.dtype)
        (s1, s2), n = _all_reduce_sums([dy3.sum((0, 2), dtype=acc), (dy3 * (x3 - _v(mu))).sum((0, 2), dtype=acc)],
                                       a * b, self.group, x3.dtype)
        return (s1 / n).to(x3.dtype), (s2 / n).to(x3.dtype)


@dataclasses.dataclass(frozen=True)
class SyncL1Stats(_SyncMixin, NF.L1Stats):
    """L1 statistics over the global batch; ``input_grad`` is L1Stats' own (it needs only global means)."""

    def batch_stats(self, x3: Tensor) -> NF.BatchStats:
        mu, _ = global_mean(x3, self.group)
        d = x3 - _v(mu)
        acc = _acc_dtype(x3.dtype)
        a, c, b = x3.shape
        (sa, ss), n = _all_reduce_sums([d.abs().sum((0, 2), dtype=acc), d.sign().sum((0, 2), dtype=acc)], a * b,
                                       self.group, x3.dtype)
        mean_abs, mean_sign = (sa / n).to(x3.dtype), (ss / n).to(x3.dtype)
        mx = _all_max(_local_max_dev(d), self.group) if self.track_max_dev else None
        return NF.BatchStats(mu, self.c * mean_abs, (mean_sign,), mx)


@dataclasses.dataclass(frozen=True)
class SyncL2Stats(_SyncMixin, NF.L2Stats):
    """L2 statistics (biased variance) over the global batch; ``input_grad`` is L2Stats' own."""

    def batch_stats(self, x3: Tensor) -> NF.BatchStats:
        mu, _ = global_mean(x3, self.group)
        d = x3 - _v(mu)
        a, c, b = x3.shape
        (sq,), n = _all_reduce_sums([(d * d).sum((0, 2), dtype=_acc_dtype(x3.dtype))], a * b, self.group, x3.dtype)
        mx = _all_max(_local_max_dev(d), self.group) if self.track_max_dev else None
        return NF.BatchStats(mu, (sq / n).to(x3.dtype), (), mx)


@dataclasses.dataclass(frozen=True)
class SyncTopkStats(_SyncMixin, NF.TopkStats):
    """Top-k statistics over the global batch. Each rank offers its k largest |x - mu| per channel (signed,
    padded with NaN to k), all ranks gather them and take the top-k of the union; aux = (this rank's share of
    the selection as ``encode_selection`` codes, 0 where the value lives on another rank; the global sum of the
    selected signs; the global n). Ties: torch.topk's choice among equal values, identical on every rank."""

    def batch_stats(self, x3: Tensor) -> NF.BatchStats:
        mu, n_t = global_mean(x3, self.group)
        n = int(round(n_t.item()))
        a, c, b = x3.shape
        nl = a * b
        k = min(self.k, n)
        kl = min(k, nl)
        d = (x3 - _v(mu)).transpose(0, 1).reshape(c, nl)  # index inside a channel: a*B + b
        idx = d.abs().topk(kl, dim=1).indices
        dev = d.gather(1, idx)
        cand = torch.full((c, k), float("nan"), dtype=x3.dtype, device=x3.device)
        cand[:, :kl] = dev
        world = dist.get_world_size(self.group)
        gathered = [torch.empty_like(cand) for _ in range(world)]
        dist.all_gather(gathered, cand, group=self.group)
        allc = torch.cat(gathered, dim=1)  # (c, world*k), rank r's candidates at [r*k, (r+1)*k)
        j = allc.abs().nan_to_num(nan=-1.0).topk(k, dim=1).indices
        sel = allc.gather(1, j)  # selected signed deviations, |.| descending
        adev = sel.abs()
        mine = (j // k) == dist.get_rank(self.group)
        pos = (j % k).clamp_max(max(kl - 1, 0))
        if kl > 0:
            code = NF.encode_selection(idx.gather(1, pos), dev.gather(1, pos)) * mine
        else:
            code = torch.zeros(c, k, dtype=torch.int64, device=x3.device)
        sgn_sum = torch.nan_to_num(sel.sign(), nan=0.0).sum(1)
        n_t = torch.tensor(n, dtype=torch.int64)
        f = c_linf(n) * adev.mean(1)
        return NF.BatchStats(mu, f, (code, sgn_sum, n_t), adev[:, 0])

    def input_grad(self, x3, dy3, dx3, mu, s, a, q, mean_dy, aux) -> None:
        # TopkStats.input_grad with the global n, k and sum of selected signs; w only at this rank's selected
        code, sgn_sum, n_t = aux
        idx, sgn = NF.decode_selection(code, x3.dtype)
        na, c, b = x3.shape
        n, k = int(n_t), idx.shape[1]
        cn = c_linf(n)
        c0 = -a * mean_dy + (q * (cn / k)) * sgn_sum.to(x3.dtype)
        w = -(q * (cn * n / k)).unsqueeze(1) * sgn
        torch.mul(dy3, _v(a), out=dx3)
        dx3.add_(_v(c0))
        ch = torch.arange(c, device=idx.device).unsqueeze(1).expand(c, k)
        dx3.index_put_((idx // b, ch, idx % b), w.to(dx3.dtype), accumulate=True)


class SyncMeanBatchNormFunction(torch.autograd.Function):
    """Mean-only batch norm over the global batch: y = x - mu + beta; dx = dy - mean_global(dy),
    dbeta = n_local/n * sum_global(dy) (summed over ranks: the global sum). Returns (y, mu)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, compute_dtype: torch.dtype, group):
        ctx.set_materialize_grads(False)
        xd = NF.dense(x)
        x3 = NF.view3(xd)
        xc3 = x3 if x3.dtype == compute_dtype else x3.to(compute_dtype)
        mu, _ = global_mean(xc3, group)
        shift = mu if bias is None else mu - bias.to(compute_dtype)
        y = torch.empty_like(xd, dtype=compute_dtype)
        torch.sub(xc3, _v(shift), out=NF.view3(y))
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        ctx.group, ctx.compute_dtype = group, compute_dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(mu)
        return y, mu

    @staticmethod
    def backward(ctx, dy, _unused):
        if dy is None:
            return None, None, None, None
        cd = ctx.compute_dtype
        dyd = NF.dense(dy)
        dy3 = NF.view3(dyd)
        dyc3 = dy3 if dy3.dtype == cd else dy3.to(cd)
        a, c, b = dyc3.shape
        (s1,), n = _all_reduce_sums([dyc3.sum((0, 2), dtype=_acc_dtype(cd))], a * b, ctx.group, cd)
        mean_dy = (s1 / n).to(cd)
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(dyd, dtype=cd)
            torch.sub(dyc3, _v(mean_dy), out=NF.view3(dx))
            grad_x = dx if dx.dtype == dyd.dtype else dx.to(dyd.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            grad_b = (mean_dy * (a * b)).to(ctx.bias_dtype)
        return grad_x, grad_b, None, None


# ------------------------------------------------------------------------------------------- layers
class _Sync:
    """Mixin of every synchronized norm layer: its ``process_group`` (None = WORLD) and the repr flag."""
    process_group = None
    is_sync_norm = True

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sync=True"


class _SyncLp(_Sync):
    """Mixin of the synchronized Lp batch norms: statistics objects carry ``process_group``."""

    def _new_stats(self) -> NF._Stats:
        return dataclasses.replace(super()._new_stats(), group=self.process_group)


class SyncL1BatchNorm(_SyncLp, L1BatchNorm):
    stats_cls = SyncL1Stats


class SyncTopkBatchNorm(_SyncLp, TopkBatchNorm):
    stats_cls = SyncTopkStats


class SyncLinfBatchNorm(_SyncLp, LinfBatchNorm):
    stats_cls = SyncTopkStats


class SyncL2LpBatchNorm(_SyncLp, L2LpBatchNorm):
    stats_cls = SyncL2Stats

    def _update_scale(self, f: Tensor, x: Tensor, m: float) -> None:
        n = global_count(x, self.process_group)
        self._ema(self.running_var, f * (n / (n - 1)), m)


class SyncMeanBatchNorm(_Sync, MeanBatchNorm):
    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        with _autocast_off(x):
            y, mu = SyncMeanBatchNormFunction.apply(x, self.bias, cd, self.process_group)
            with torch.no_grad():
                self._ema(self.running_mean, mu, self._factor())
                if self.track_max_dev:
                    xc = x.detach().to(cd)
                    self.last_max_dev = _all_max(_local_max_dev(NF.view3(NF.dense(xc - _param_view(mu, xc)))),
                                                 self.process_group).amax()
            return y


class SyncBatchNorm(_Sync, BatchNorm):
    """torch's batch norm (``l2``, impl="torch") with synchronized statistics: torch's own synchronized kernels
    (``torch.nn.modules._functions.SyncBatchNorm``, what ``nn.SyncBatchNorm`` runs) on CUDA/XPU/HPU input without
    stats_dtype or track_max_dev, else ``SyncL2Stats`` through this package's Lp path with torch's buffer updates.
    Eval: BatchNorm's (running statistics, no communication). Not an ``nn.SyncBatchNorm`` subclass: DDP refuses
    those on CPU modules, and torch's sync kernels refuse CPU tensors."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        torch_kernels = x.device.type in ("cuda", "xpu", "hpu") and cd == x.dtype and not self.track_max_dev
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            m = 0.0
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if torch_kernels:
            from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBN
            world = dist.get_world_size(group)
            if world == 1:
                return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, m, self.eps)
            return _TorchSyncBN.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, m,
                                      group, world)
        stats = SyncL2Stats(eps=self.eps, track_max_dev=self.track_max_dev, group=self.process_group)
        with _autocast_off(x):
            y, mu, f, max_dev = NF.LpBatchNormFunction.apply(x, self.weight, self.bias, stats, cd)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                n = global_count(x, self.process_group)
                self.running_mean.mul_(1 - m).add_(mu.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_((f * (n / (n - 1))).to(self.running_var.dtype), alpha=m)
        if self.track_max_dev:
            self.last_max_dev = max_dev.detach().amax()
        return y


_LP_SYNC = {BatchNorm: SyncBatchNorm, L1BatchNorm: SyncL1BatchNorm, TopkBatchNorm: SyncTopkBatchNorm,
            LinfBatchNorm: SyncLinfBatchNorm,
            L2LpBatchNorm: SyncL2LpBatchNorm, MeanBatchNorm: SyncMeanBatchNorm}


def is_sync_norm(module) -> bool:
    return isinstance(module, nn.SyncBatchNorm) or getattr(type(module), "is_sync_norm", False) is True


def _convert(module: nn.Module, process_group) -> nn.Module:
    cls = type(module)
    if is_sync_norm(module):
        module.process_group = process_group
        module.__dict__.pop("_stats_cache", None)
        return module
    if cls in _LP_SYNC:
        module.__class__ = _LP_SYNC[cls]
        module.process_group = process_group
        module.__dict__.pop("_stats_cache", None)
        return module
    if isinstance(module, _BatchNorm):  # a plain torch batch norm: torch's own conversion
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    if cls is NoNorm or not getattr(cls, "is_norm_layer", False):
        for name, child in module.named_children():
            new = _convert(child, process_group)
            if new is not child:
                setattr(module, name, new)
        return module
    raise ConfigError(f"norm.sync=true: no synchronized version of the norm layer {cls.__name__}")


def convert_sync_norms(model: nn.Module, process_group=None) -> nn.Module:
    """Replace every norm layer of ``model`` by its synchronized version (statistics over all ranks of
    ``process_group``, default the world) and return the model. Lp and mean layers change class in place
    (same parameters and buffers), this package's torch ``BatchNorm`` included (-> ``SyncBatchNorm``); plain
    torch batch norms go through ``nn.SyncBatchNorm.convert_sync_batchnorm`` (GPU only). Raises ConfigError
    when torch.distributed has no process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("norm.sync=true needs a process group (launch with torchrun --nproc_per_node=N "
                          "train.py ...); got none")
    return _convert(model, process_group)
