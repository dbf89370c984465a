"""Lp batch-norm math: per-norm batch statistics and one autograd Function (forward + analytic backward).

Notation (docs/paper.md §1.3), per channel over the n = N*H*W values of the batch (n = N for 2-D input):
    mu = mean(x),  d = x - mu,  s = f(d) + eps  (f: the norm's scale estimate; for L2 s = sqrt(mean d^2 + eps)),
    y = gamma * d / s + beta.
Backward, with g = gamma*dy and phi_j = d f / d d_j:
    dL/dx_j = (g_j - mean g) / s - (sum_i g_i d_i / s^2) (phi_j - mean phi)
    L1:    phi_j = C_L1 sign(d_j) / n
    Top-k: phi_j = C(n) sign(d_j) / k on the k selected values, 0 elsewhere (L-inf is Top-1)
    L2:    phi_j = d_j / (n s)
so one pass computes sum(dy) and sum(dy*d) and a second writes dx; only x is kept for the backward
(plus per-channel vectors; for Top-k the k selected indices and signs per channel).

Statistics live in one place per norm: the ``batch_stats`` method of its ``*Stats`` class (and
``grad_sums`` for the backward's two sums), so a synchronized (all-reduced) version can subclass them.

Backends: on the CPU in float32/float64 the passes run in the compiled kernels of ``_kernels.cpp``
(``_native``); elsewhere (CUDA, float16/bfloat16, while torch.compile traces, or when no C++ compiler
is available) the same formulas run as torch ops, which torch.compile can fuse. ``set_backend`` or
the environment variable ``NORMREPRO_NORM_BACKEND`` (auto | native | torch) chooses.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from normrepro.errors import choice_error
from normrepro.norms import _native
from normrepro.norms.constants import C_L1, c_linf

BACKENDS = ("auto", "native", "torch")
_backend = os.environ.get("NORMREPRO_NORM_BACKEND", "auto")
if _backend not in BACKENDS:
    raise choice_error("NORMREPRO_NORM_BACKEND", _backend, BACKENDS)

Tensor = torch.Tensor


def set_backend(name: str) -> None:
    """``auto`` (native CPU kernels where they apply, else torch ops), ``native`` or ``torch``."""
    global _backend
    if name not in BACKENDS:
        raise choice_error("norm backend", name, BACKENDS)
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str):
    """Context manager: ``with backend("torch"): ...``."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


# ------------------------------------------------------------------------------------------- layouts
def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a 4-D channels_last tensor (that is not also plain contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense(x: Tensor) -> Tensor:
    """x itself when it is contiguous or channels_last, else a contiguous copy."""
    return x.contiguous(memory_format=memory_format(x))


def view3(x: Tensor) -> Tensor:
    """A (A, C, B) view of a dense x: element (a, c, b) at (a*C + c)*B + b. NCHW: (N, C, H*W);
    channels_last: (N*H*W, C, 1); (N, C): (N, C, 1)."""
    n, c = x.shape[0], x.shape[1]
    if x.dim() == 2:
        return x.view(n, c, 1)
    if memory_format(x) is torch.channels_last:
        return x.permute(0, 2, 3, 1).reshape(-1, c).unsqueeze(-1)
    return x.view(n, c, -1)


def geometry(x: Tensor) -> tuple[int, int, int]:
    """(A, C, B) of a dense x as ``view3`` would see it, without building the view."""
    n, c = x.shape[0], x.shape[1]
    if x.dim() == 2:
        return n, c, 1
    hw = x.shape[2] * x.shape[3]
    if memory_format(x) is torch.channels_last:
        return n * hw, c, 1
    return n, c, hw


def _v(t: Tensor) -> Tensor:
    return t.view(1, -1, 1)


# ------------------------------------------------------------------------------------------- backends
_NATIVE_ENABLED = _native.enabled()


def use_native(*ts: Tensor) -> bool:
    """Whether the CPU kernels apply to these tensors (plain dense CPU float32/float64, eager mode)."""
    if _backend == "torch" or not _NATIVE_ENABLED:
        return False
    for t in ts:
        if type(t) is not torch.Tensor or not t.is_cpu or t.dtype not in _native.SUFFIX:
            return False
    if torch.compiler.is_compiling():
        return False
    if _native.lib() is None:
        if _backend == "native":
            raise RuntimeError(f"normrepro native norm kernels unavailable: {_native.error()}")
        return False
    return True


def _nt() -> int:
    return torch.get_num_threads()


def _call(name: str, dtype: torch.dtype, *args) -> None:
    _native.call(name, dtype, *args)


# ------------------------------------------------------------------------------------------- statistics
def channel_mean(x3: Tensor) -> Tensor:
    """Per-channel mean of a (A, C, B) view, in its dtype."""
    if use_native(x3):
        a, c, b = x3.shape
        mu = x3.new_empty(c)
        _call("nr_mean", x3.dtype, x3, a, c, b, mu, _nt())
        return mu
    return x3.mean((0, 2))


def grad_sums(x3: Tensor, dy3: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """(mean(dy), mean(dy * (x - mu))) per channel: the backward's reductions."""
    a, c, b = x3.shape
    if use_native(x3, dy3):
        s1, s2 = x3.new_empty(c), x3.new_empty(c)
        _call("nr_grad_sums", x3.dtype, x3, dy3, a, c, b, mu, s1, s2, _nt())
        n = a * b
        return s1 / n, s2 / n
    return dy3.mean((0, 2)), (dy3 * (x3 - _v(mu))).mean((0, 2))


@dataclass(frozen=True)
class BatchStats:
    mu: Tensor                  # per-channel batch mean
    f: Tensor                   # the scale estimate without eps (L2: the biased variance)
    aux: tuple                  # tensors the backward needs
    max_dev: Tensor | None      # per-channel max |x - mu| when known or asked for


@dataclass(frozen=True)
class _Stats:
    """Base of the per-norm statistics. ``batch_stats`` and ``grad_sums`` are the only reductions over
    the batch (replace both by all-reduced versions for synchronized batch norm)."""
    eps: float
    track_max_dev: bool = False
    name = "?"

    def batch_stats(self, x3: Tensor) -> BatchStats:
        raise NotImplementedError

    def grad_sums(self, x3: Tensor, dy3: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
        return grad_sums(x3, dy3, mu)

    def scale(self, f: Tensor) -> Tensor:
        """s from the estimate f (the denominator of the normalization)."""
        return f + self.eps

    def input_grad(self, x3, dy3, dx3, mu, s, a, q, mean_dy, aux) -> None:
        """Write dL/dx into dx3. a = gamma/s, q = gamma*mean(dy*d)/s^2 per channel."""
        raise NotImplementedError


@dataclass(frozen=True)
class L1Stats(_Stats):
    """s = c * mean|x - mu| + eps, c = sqrt(pi/2) (``c`` = l1_scale * sqrt(pi/2) for the paper's ablation)."""
    name = "l1"
    c: float = C_L1

    def batch_stats(self, x3: Tensor) -> BatchStats:
        a, c, b = x3.shape
        n = a * b
        mu = channel_mean(x3)
        if use_native(x3):
            sa, ss = x3.new_empty(c), x3.new_empty(c)
            mx = x3.new_empty(c) if self.track_max_dev else None
            _call("nr_l1", x3.dtype, x3, a, c, b, mu, sa, ss, mx, _nt())
            mean_abs, mean_sign = sa / n, ss / n
        else:
            d = x3 - _v(mu)
            ad = d.abs()
            mean_abs, mean_sign = ad.mean((0, 2)), d.sign().mean((0, 2))
            mx = ad.amax((0, 2)) if self.track_max_dev else None
        return BatchStats(mu, self.c * mean_abs, (mean_sign,), mx)

    def input_grad(self, x3, dy3, dx3, mu, s, a, q, mean_dy, aux) -> None:
        # dx = a*dy + kc*sign(x - mu) + c0
        (mean_sign,) = aux
        kc = -self.c * q
        c0 = -a * mean_dy - kc * mean_sign
        if use_native(x3, dy3, dx3):
            na, c, b = x3.shape
            _call("nr_l1_dx", x3.dtype, x3, dy3, na, c, b, mu, a.contiguous(), kc.contiguous(), c0.contiguous(),
                  dx3, _nt())
            return
        torch.sub(x3, _v(mu), out=dx3)
        dx3.sign_().mul_(_v(kc)).addcmul_(dy3, _v(a)).add_(_v(c0))


def encode_selection(idx: Tensor, dev: Tensor) -> Tensor:
    """The k selected indices and the signs of their deviations in one int64 tensor, (idx + 1) * sign,
    so that the backward keeps no more than BatchNorm's bytes for L-inf (a zero deviation has no gradient)."""
    return (idx + 1) * torch.nan_to_num(dev.sign(), nan=0.0).to(torch.int64)


def decode_selection(code: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(indices, signs in ``dtype``) from ``encode_selection``."""
    return (code.abs() - 1).clamp_min_(0), code.sign().to(dtype)


@dataclass(frozen=True)
class TopkStats(_Stats):
    """s = C(n) * mean of the k largest |x - mu| + eps (k capped at n); L-infinity is k = 1."""
    k: int = 10
    name = "topk"

    def batch_stats(self, x3: Tensor) -> BatchStats:
        a, c, b = x3.shape
        n = a * b
        k = min(self.k, n)
        mu = channel_mean(x3)
        if use_native(x3):
            dev = x3.new_empty(c, k)
            idx = torch.empty(c, k, dtype=torch.int64)
            _call("nr_topk", x3.dtype, x3, a, c, b, mu, k, dev, idx, _nt())
        else:
            d = (x3 - _v(mu)).transpose(0, 1).reshape(c, n)  # index inside a channel: a*B + b
            idx = d.abs().topk(k, dim=1).indices
            dev = d.gather(1, idx)
        adev = dev.abs()
        f = c_linf(n) * adev.mean(1)
        return BatchStats(mu, f, (encode_selection(idx, dev),), adev[:, 0])

    def input_grad(self, x3, dy3, dx3, mu, s, a, q, mean_dy, aux) -> None:
        # dx = a*dy + c0 everywhere, plus w at the k selected values of each channel
        idx, sgn = decode_selection(aux[0], x3.dtype)
        na, c, b = x3.shape
        n, k = na * b, idx.shape[1]
        cn = c_linf(n)
        c0 = -a * mean_dy + (q * (cn / k)) * sgn.sum(1)
        w = -(q * (cn * n / k)).unsqueeze(1) * sgn
        if use_native(x3, dy3, dx3):
            _call("nr_affine", x3.dtype, dy3, na, c, b, torch.zeros_like(a), a.contiguous(), c0.contiguous(), dx3,
                  _nt())
            _call("nr_scatter_add", x3.dtype, dx3, na, c, b, k, idx.contiguous(), w.contiguous())
            return
        torch.mul(dy3, _v(a), out=dx3)
        dx3.add_(_v(c0))
        ch = torch.arange(c, device=idx.device).unsqueeze(1).expand(c, k)
        dx3.index_put_((idx // b, ch, idx % b), w.to(dx3.dtype), accumulate=True)


@dataclass(frozen=True)
class L2Stats(_Stats):
    """s = sqrt(mean (x - mu)^2 + eps), the squares computed in the statistics dtype (the paper's
    naive L2: in float16 it overflows once |x - mu| > 255.9)."""
    name = "l2"

    def batch_stats(self, x3: Tensor) -> BatchStats:
        mu = channel_mean(x3)
        d = x3 - _v(mu)
        var = (d * d).mean((0, 2))
        mx = d.abs().amax((0, 2)) if self.track_max_dev else None
        return BatchStats(mu, var, (), mx)

    def scale(self, f: Tensor) -> Tensor:
        return (f + self.eps).sqrt()

    def input_grad(self, x3, dy3, dx3, mu, s, a, q, mean_dy, aux) -> None:
        # dx = a*dy - (q/s) * (x - mu) - a*mean(dy)
        torch.sub(x3, _v(mu), out=dx3)
        dx3.mul_(_v(-q / s)).addcmul_(dy3, _v(a)).add_(_v(-a * mean_dy))


# ------------------------------------------------------------------------------------------- autograd
def fused_kind(stats: _Stats) -> int | None:
    """0 (L1) or 1 (Top-k) when the statistics are this module's own, so that the fused CPU kernels
    (statistics, output and backward in one pass over each channel group) compute exactly them;
    None for anything else, e.g. a subclass that all-reduces its statistics."""
    cls = type(stats)
    if cls.grad_sums is not _Stats.grad_sums or cls.scale is not _Stats.scale:
        return None
    if isinstance(stats, L1Stats) and cls.batch_stats is L1Stats.batch_stats \
            and cls.input_grad is L1Stats.input_grad:
        return 0
    if isinstance(stats, TopkStats) and cls.batch_stats is TopkStats.batch_stats \
            and cls.input_grad is TopkStats.input_grad:
        return 1
    return None


class LpBatchNormFunction(torch.autograd.Function):
    """y = gamma * (x - mu) / s + beta with batch statistics from ``stats`` (an ``_Stats``), computed in
    ``compute_dtype``. Returns (y, mu, f, max_dev); only y is differentiable. Saves x (the one
    activation-sized tensor) and per-channel vectors."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, stats: _Stats,
                compute_dtype: torch.dtype):
        ctx.set_materialize_grads(False)
        xd = dense(x)
        w = weight.to(compute_dtype).contiguous() if weight is not None else None
        bi = bias.to(compute_dtype).contiguous() if bias is not None else None
        kind = fused_kind(stats) if compute_dtype == x.dtype and use_native(xd) else None
        if kind is not None:  # statistics and output in one kernel, on the dense tensor itself
            na, c, b = geometry(xd)
            n = na * b
            k = min(stats.k, n) if kind == 1 else 1
            cscale = c_linf(n) if kind == 1 else stats.c
            y = torch.empty_like(xd)
            mu, f, s = xd.new_empty(c), xd.new_empty(c), xd.new_empty(c)
            aux1 = xd.new_empty(c, k) if kind == 1 else xd.new_empty(c)
            aux2 = torch.empty(c, k, dtype=torch.int64) if kind == 1 else None
            max_dev = xd.new_empty(c) if kind == 0 and stats.track_max_dev else None
            _call("nr_fwd", xd.dtype, kind, xd, na, c, b, w, bi, stats.eps, cscale, k, y, mu, f, s, aux1, aux2,
                  max_dev, _nt())
            if kind == 1:
                max_dev = aux1[:, 0].abs()
                aux = (encode_selection(aux2, aux1),)
            else:
                aux = (aux1,)
        else:
            x3 = view3(xd)
            xc3 = x3 if x3.dtype == compute_dtype else x3.to(compute_dtype)
            na, c, b = xc3.shape
            st = stats.batch_stats(xc3)
            mu, f, aux, max_dev = st.mu, st.f, st.aux, st.max_dev
            s = stats.scale(f)
            scale = w / s if w is not None else s.reciprocal()
            shift = bi if bi is not None else torch.zeros_like(s)
            y = torch.empty_like(xd, dtype=compute_dtype)
            y3 = view3(y)
            if compute_dtype == x.dtype and use_native(xc3):
                _call("nr_affine", xc3.dtype, xc3, na, c, b, mu, scale.contiguous(), shift, y3, _nt())
            else:
                torch.sub(xc3, _v(mu), out=y3)
                y3.mul_(_v(scale)).add_(_v(shift))
            if y.dtype != x.dtype:
                y = y.to(x.dtype)

        ctx.save_for_backward(xd, weight, mu, s, *aux)
        ctx.stats = stats
        ctx.kind = kind
        ctx.compute_dtype = compute_dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        if max_dev is None:
            max_dev = mu.new_empty(0)
        ctx.mark_non_differentiable(mu, f, max_dev)
        return y, mu, f, max_dev

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *_unused):
        xd, weight, mu, s, *aux = ctx.saved_tensors
        stats, cd, kind = ctx.stats, ctx.compute_dtype, ctx.kind
        grad_x = grad_w = grad_b = None
        if dy is None:  # y unused by the loss
            return None, None, None, None, None
        dyd = dy.to(xd.dtype).contiguous(memory_format=memory_format(xd))

        if kind is not None and use_native(xd, dyd):  # sums and dx in one kernel
            na, c, b = geometry(xd)
            n = na * b
            dx = torch.empty_like(xd)
            sum_dy, sum_dyd = xd.new_empty(c), xd.new_empty(c)
            gamma = weight.to(cd).contiguous() if weight is not None else None
            if kind == 1:
                idx, sgn = decode_selection(aux[0], xd.dtype)
                k, cscale, aux1, aux2 = idx.shape[1], c_linf(n), sgn, idx
            else:
                k, cscale, aux1, aux2 = 1, stats.c, aux[0], None
            _call("nr_bwd", xd.dtype, kind, xd, dyd, na, c, b, mu, s, gamma, cscale, k, aux1, aux2, dx, sum_dy,
                  sum_dyd, _nt())
            if ctx.needs_input_grad[0]:
                grad_x = dx
            if weight is not None and ctx.needs_input_grad[1]:
                grad_w = (sum_dyd / s).to(weight.dtype)
            if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
                grad_b = sum_dy.to(ctx.bias_dtype)
            return grad_x, grad_w, grad_b, None, None

        x3, dy3 = view3(xd), view3(dyd)
        na, c, b = x3.shape
        n = na * b
        xc3 = x3 if x3.dtype == cd else x3.to(cd)
        dyc3 = dy3 if dy3.dtype == cd else dy3.to(cd)
        mean_dy, mean_dyd = stats.grad_sums(xc3, dyc3, mu)
        gamma = weight.to(cd) if weight is not None else None
        a = gamma / s if gamma is not None else s.reciprocal()
        q = mean_dyd / s / s
        if gamma is not None:
            q = q * gamma
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(xd, dtype=cd)
            stats.input_grad(xc3, dyc3, view3(dx), mu, s, a, q, mean_dy, tuple(aux))
            grad_x = dx if dx.dtype == xd.dtype else dx.to(xd.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (mean_dyd / s * n).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = (mean_dy * n).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def lp_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, stats: _Stats,
                  compute_dtype: torch.dtype | None = None):
    """Training-mode Lp batch norm of x (N, C) or (N, C, H, W): (y, mu, f, max_dev)."""
    return LpBatchNormFunction.apply(x, weight, bias, stats, compute_dtype or x.dtype)


class MeanBatchNormFunction(torch.autograd.Function):
    """Mean-only batch norm, training: y = x - mu + beta. Returns (y, mu); saves no activation.
    Backward: dx = dy - mean(dy), dbeta = sum(dy)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, compute_dtype: torch.dtype):
        ctx.set_materialize_grads(False)
        xd = dense(x)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.compute_dtype = compute_dtype
        if compute_dtype == x.dtype and use_native(xd):
            na, c, b = geometry(xd)
            mu = xd.new_empty(c)
            _call("nr_mean", xd.dtype, xd, na, c, b, mu, _nt())
            shift = bias.to(xd.dtype).contiguous() if bias is not None else xd.new_zeros(c)
            y = torch.empty_like(xd)
            _call("nr_affine", xd.dtype, xd, na, c, b, mu, xd.new_ones(c), shift, y, _nt())
        else:
            x3 = view3(xd)
            xc3 = x3 if x3.dtype == compute_dtype else x3.to(compute_dtype)
            mu = channel_mean(xc3)
            shift = mu if bias is None else mu - bias.to(compute_dtype)
            y = torch.empty_like(xd, dtype=compute_dtype)
            torch.sub(xc3, _v(shift), out=view3(y))
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
        ctx.mark_non_differentiable(mu)
        return y, mu

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _unused):
        if dy is None:
            return None, None, None
        cd = ctx.compute_dtype
        dyd = dense(dy)
        grad_x = grad_b = None
        if dyd.dtype == cd and use_native(dyd):
            na, c, b = geometry(dyd)
            s1 = dyd.new_empty(c)
            _call("nr_grad_sums", dyd.dtype, None, dyd, na, c, b, None, s1, None, _nt())
            if ctx.needs_input_grad[0]:
                grad_x = torch.empty_like(dyd)
                _call("nr_affine", dyd.dtype, dyd, na, c, b, s1 / (na * b), dyd.new_ones(c), dyd.new_zeros(c), grad_x,
                      _nt())
            sum_dy = s1
        else:
            dy3 = view3(dyd)
            dyc3 = dy3 if dy3.dtype == cd else dy3.to(cd)
            mean_dy = dyc3.mean((0, 2))
            sum_dy = mean_dy * (dy3.shape[0] * dy3.shape[2])
            if ctx.needs_input_grad[0]:
                dx = torch.empty_like(dyd, dtype=cd)
                torch.sub(dyc3, _v(mean_dy), out=view3(dx))
                grad_x = dx if dx.dtype == dyd.dtype else dx.to(dyd.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            grad_b = sum_dy.to(ctx.bias_dtype)
        return grad_x, grad_b, None
