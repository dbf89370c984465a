"""Synchronized batch statistics for every norm (``train.sync_norms=true``): ``convert_sync_norms(model, group)``.

With sync on, mu and s are computed over the global batch (all ranks of the process group) and n is the
global count, so a model trained with DistributedDataParallel on W ranks, each given a slice of the batch,
follows the same trajectory as one process trained on the whole batch without sync.

This module holds no formula: a synchronized norm runs the same composition of primitives as a single process
(``compose.py``), with ``Collectives`` between the primitives:
    sum_count: one all-reduce of [partial sums..., count]     (mean; the backward's sum dy, sum dy*d)
    sum:       one all-reduce of partial sums                  (L1: sum|d|, sum sign d; L2: sum d^2)
    max:       a MAX all-reduce                                (max |d|)
    topk:      an all_gather of each rank's k largest |d| candidates (signed, NaN-padded to k) per channel,
               then the top-k of the union; each rank keeps the globally selected values that are its own
Gradients of weight/bias: each rank returns n_local/n * (global sum); summed over ranks (DDP's all-reduce) this
is the global sum, as with torch's SyncBatchNorm whose ranks return their local sums.

The layers are converted in place by changing their class to a ``Sync*`` subclass (parameters, buffers, hooks
and any optimizer that holds the parameters stay valid). torch's ``BatchNorm`` (l2, impl="torch") becomes
``SyncBatchNorm``: torch's synchronized kernels (those of ``nn.SyncBatchNorm``) on CUDA, the composed L2 path
elsewhere or with stats_dtype/track_max_dev. (``nn.SyncBatchNorm.convert_sync_batchnorm`` itself is used only for
plain torch batch norms: DDP refuses ``nn.SyncBatchNorm`` in CPU modules and its kernels refuse CPU tensors.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError
from normrepro.norms import formulas as FM
from normrepro.norms import ops
from normrepro.norms.layers import (
    BatchNorm,
    GhostTopkBatchNorm,
    L1BatchNorm,
    L2LpBatchNorm,
    LinfBatchNorm,
    MeanBatchNorm,
    NormLayer,
    TopkBatchNorm,
    autocast_off,
    check_input,
)

Tensor = torch.Tensor

__all__ = ["convert_sync_norms", "is_sync_norm", "Collectives", "global_count", "SyncBatchNorm", "SyncL1BatchNorm",
           "SyncL2LpBatchNorm", "SyncLinfBatchNorm", "SyncTopkBatchNorm", "SyncGhostTopkBatchNorm",
           "SyncMeanBatchNorm"]


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the all-reduced sums: at least float32 (a float16 count overflows at 65504)."""
    return torch.promote_types(dtype, torch.float32)


class Collectives:
    """The collectives between the primitives of a synchronized norm, over process group ``group`` (None: WORLD)."""
    local = False
    fuse = False  # no fused kernels: the collectives sit between the primitives

    def __init__(self, group=None):
        self.group = group

    def sum_count(self, parts: list[Tensor], count: int) -> tuple[list[Tensor], Tensor]:
        """All-reduce (SUM) the per-channel vectors ``parts`` and the local count in one collective: the global
        sums (in at least float32) and the global count (a 0-dim tensor: no device sync)."""
        acc = _acc(parts[0].dtype)
        buf = torch.cat([p.to(acc).reshape(-1) for p in parts] + [parts[0].new_full((1,), count, dtype=acc)])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        out, i = [], 0
        for p in parts:
            out.append(buf[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out, buf[-1]

    def sum(self, parts: list[Tensor]) -> list[Tensor]:
        """All-reduce (SUM) the per-channel vectors ``parts`` in one collective."""
        acc = _acc(parts[0].dtype)
        buf = torch.cat([p.to(acc).reshape(-1) for p in parts])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return list(buf.split([p.numel() for p in parts]))

    def max(self, t: Tensor) -> Tensor:
        """The element-wise maximum of t over all ranks."""
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t

    def topk(self, dev: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """(the (C, k) globally selected signed deviations, |d| descending, identical on every rank; this rank's
        share as ``encode_selection`` codes, 0 where the value lives on another rank; the global sum of the selected
        signs). dev/idx: this rank's (C, kl) candidates, kl <= k. Ties: torch.topk's choice among equal values, the
        same on every rank."""
        c, kl = dev.shape
        cand = dev.new_full((c, k), float("nan"))
        cand[:, :kl] = dev
        world = dist.get_world_size(self.group)
        gathered = [torch.empty_like(cand) for _ in range(world)]
        dist.all_gather(gathered, cand, group=self.group)
        allc = torch.cat(gathered, dim=1)  # (c, world*k), rank r's candidates at [r*k, (r+1)*k)
        j = allc.abs().nan_to_num(nan=-1.0).topk(k, dim=1).indices
        sel = allc.gather(1, j)
        sgn_sum = FM.sign_sum(sel)
        if kl == 0:
            return sel, torch.zeros(c, k, dtype=torch.int64, device=dev.device), sgn_sum
        mine = (j // k) == dist.get_rank(self.group)
        pos = (j % k).clamp_max(kl - 1)
        return sel, FM.encode_selection(idx.gather(1, pos), dev.gather(1, pos)) * mine, sgn_sum


def global_count(x: Tensor, group) -> Tensor:
    """The global number of values per channel, sum over ranks of N*H*W (a 0-dim float64 tensor)."""
    t = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64, device=x.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t[0]


# ------------------------------------------------------------------------------------------- layers
class _Sync:
    """Mixin of every synchronized norm layer: its ``process_group`` (None = WORLD) and the repr flag."""
    process_group = None
    is_sync_norm = True

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sync=True"


class _SyncLp(_Sync):
    """Mixin of the synchronized Lp batch norms: the collectives between the primitives, the global count."""

    def _batch_norm(self, x: Tensor, cd: torch.dtype) -> tuple[Tensor, ...]:
        return ops.lp_norm(x, self.weight, self.bias, self._history(), self.spec(), cd, Collectives(self.process_group))

    def _count(self, x: Tensor):
        return global_count(x, self.process_group)


class SyncL1BatchNorm(_SyncLp, L1BatchNorm):
    """L1BatchNorm over the global batch."""


class SyncTopkBatchNorm(_SyncLp, TopkBatchNorm):
    """TopkBatchNorm over the global batch (the global top-k)."""


class SyncLinfBatchNorm(_SyncLp, LinfBatchNorm):
    """LinfBatchNorm over the global batch."""


class SyncGhostTopkBatchNorm(_SyncLp, GhostTopkBatchNorm):
    """GhostTopkBatchNorm over the global batch: T from the global top-k, so the history is identical on every rank."""


class SyncL2LpBatchNorm(_SyncLp, L2LpBatchNorm):
    """L2LpBatchNorm over the global batch (running_var unbiased with the global n)."""


class SyncMeanBatchNorm(_Sync, MeanBatchNorm):
    """MeanBatchNorm over the global batch."""

    def _batch_norm(self, x: Tensor, cd: torch.dtype) -> tuple[Tensor, ...]:
        return ops.mean_norm(x, self.bias, cd, bool(self.track_max_dev), Collectives(self.process_group))


class SyncBatchNorm(_Sync, BatchNorm):
    """torch's batch norm (``l2``, impl="torch") with synchronized statistics: torch's own synchronized kernels
    (``torch.nn.modules._functions.SyncBatchNorm``, what ``nn.SyncBatchNorm`` runs) on CUDA/XPU/HPU input without
    stats_dtype or track_max_dev, else the composed L2 path with ``Collectives`` and torch's buffer updates.
    Eval: BatchNorm's (running statistics, no communication). Not an ``nn.SyncBatchNorm`` subclass: DDP refuses
    those on CPU modules, and torch's sync kernels refuse CPU tensors."""

    def forward(self, x: Tensor) -> Tensor:
        """Training: sigma over the global batch; eval: the running statistics."""
        if not self.training:
            return super().forward(x)
        check_input(self, x)
        cd = self.stats_dtype or x.dtype
        torch_kernels = x.device.type in ("cuda", "xpu", "hpu") and cd == x.dtype and not self.track_max_dev
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if torch_kernels:
            from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBN
            world = dist.get_world_size(group)
            if world == 1:
                return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, m, self.eps)
            return _TorchSyncBN.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, m,
                                      group, world)
        spec = FM.LpSpec(kind="l2", eps=float(self.eps), want_max=bool(self.track_max_dev))
        with autocast_off(x):
            y, mu, f, *_, max_dev, _h = ops.lp_norm(x, self.weight, self.bias, None, spec, cd,
                                                    Collectives(self.process_group))
        with torch.no_grad():
            n = global_count(x, self.process_group)
            self.running_mean.mul_(1 - m).add_(mu.to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_((f * (n / (n - 1))).to(self.running_var.dtype), alpha=m)
        if self.track_max_dev:
            self.last_max_dev = max_dev.detach().amax()
        return y


def is_sync_norm(module) -> bool:
    """True for synchronized norm layers (this package's and nn.SyncBatchNorm)."""
    return isinstance(module, nn.SyncBatchNorm) or getattr(type(module), "is_sync_norm", False) is True


def _convert(module: nn.Module, process_group, sync_of: dict) -> nn.Module:
    cls = type(module)
    if is_sync_norm(module):
        module.process_group = process_group
        return module
    if cls in sync_of:
        module.__class__ = sync_of[cls]
        module.process_group = process_group
        return module
    if isinstance(module, NormLayer) and cls.__name__ != "NoNorm":
        raise ConfigError(f"train.sync_norms=true: no synchronized version of the norm layer {cls.__name__}")
    if isinstance(module, _BatchNorm):  # a plain torch batch norm: torch's own conversion
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        new = _convert(child, process_group, sync_of)
        if new is not child:
            setattr(module, name, new)
    return module


def convert_sync_norms(model: nn.Module, process_group=None) -> nn.Module:
    """Replace every norm layer of ``model`` by its synchronized version (statistics over all ranks of
    ``process_group``, default the world) and return the model. This package's layers change class in place
    (same parameters and buffers), its torch ``BatchNorm`` included (-> ``SyncBatchNorm``); plain torch batch norms
    go through ``nn.SyncBatchNorm.convert_sync_batchnorm`` (GPU only). Raises ConfigError when torch.distributed
    has no process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("train.sync_norms=true needs a process group (launch with torchrun --nproc_per_node=N "
                          "train.py ...); got none")
    from normrepro.norms.registry import SYNC_OF

    return _convert(model, process_group, SYNC_OF)
