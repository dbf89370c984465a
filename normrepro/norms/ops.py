"""The norms as registered torch operators (``torch.library.custom_op``, namespace ``normrepro``):

    torch.ops.normrepro.lp_norm_fwd / lp_norm_bwd      l1, topk (L-inf, ghost Top-k), l2 (impl=lp)
    torch.ops.normrepro.mean_norm_fwd / mean_norm_bwd  mean-only batch norm
    torch.ops.normrepro.lp_norm_stats / mean_norm_stats  the forward's batch statistics alone

Each has a fake (meta) implementation and the forward ops their autograd formula (lp_norm_bwd, or torch ops for
the statistics ops), so ``torch.compile(model, fullgraph=True)`` captures a norm without a graph break and runs the
backend's kernels (the C++ CPU kernels included) inside the compiled graph. Two forms, ``NORMREPRO_COMPILED_NORMS``:
    split (default)  the statistics are one opaque op (lp_norm_stats); the output y = (x - mu) * gamma / s + beta
                     and the gradients are torch ops that inductor fuses with the neighbouring ReLU / add / conv
                     epilogue, as it does for BatchNorm (measured faster: see docs/bench_train.md)
    opaque           one op for the forward (lp_norm_fwd) and one for the backward (lp_norm_bwd)
The implementation is ``compose.py``'s on the backend chosen at run time (``backends.py``). The forward saves x (the
one activation-sized tensor) and per-channel vectors for the backward.

``lp_norm`` / ``mean_norm`` are the differentiable entry points the layers call. While dynamo traces (and for
tensor subclasses such as FakeTensor) they call the registered ops; in eager mode they call ``LpNormFunction`` /
``MeanNormFunction``, autograd Functions around the same composition, because the custom-op dispatch and its
Python autograd wrapper cost about 80 µs per forward+backward, 10-30 % of a small layer's whole time. The
synchronized norms use the same Functions with their collectives (``comm``).
"""
from __future__ import annotations

import os

import torch

from normrepro.errors import choice_error
from normrepro.norms import compose
from normrepro.norms import formulas as FM
from normrepro.norms.layout import channel_view, dense, geometry

Tensor = torch.Tensor
_LIB = "normrepro"


def _spec(kind: str, eps: float, c: float, k: int, beta: float, ghost_bug: bool, want_max: bool) -> FM.LpSpec:
    return FM.LpSpec(kind=kind, eps=eps, c=c, k=k, beta=beta, ghost_bug=ghost_bug, want_max=want_max)


def _or_empty(t: Tensor | None, like: Tensor, dtype=None) -> Tensor:
    return like.new_empty(0, dtype=dtype) if t is None else t.contiguous().clone() if t._base is not None else t


# ------------------------------------------------------------------------------------------- Lp norms
@torch.library.custom_op(f"{_LIB}::lp_norm_fwd", mutates_args=())
def lp_norm_fwd(x: Tensor, weight: Tensor | None, bias: Tensor | None, history: Tensor | None, kind: str, eps: float,
                c: float, k: int, beta: float, ghost_bug: bool, cd: torch.dtype, want_max: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training forward: (y, mu, f, s, aux, sel, max_dev, history_next); empty tensors where not computed."""
    r = compose.lp_forward(x, weight, bias, history, _spec(kind, eps, c, k, beta, ghost_bug, want_max), cd)
    mu = r.mu
    return (r.y, mu, _or_empty(r.f, mu), _or_empty(r.s, mu), _or_empty(r.aux, mu),
            _or_empty(r.sel, mu, torch.int64), _or_empty(r.max_dev, mu), _or_empty(r.history, mu))


def _fake_lp_outputs(x, history, kind, k, cd, want_max):
    """Shapes, dtypes and strides of lp_norm_fwd's outputs, as compose.lp_forward produces them."""
    a, ch, b = geometry(x)
    vec = x.new_empty(ch, dtype=cd)
    empty = x.new_empty(0, dtype=cd)
    topk = kind == "topk"
    return (torch.empty_like(dense(x)), vec, vec.clone(), vec.clone(), vec.clone() if kind == "l1" else empty,
            x.new_empty(ch, min(k, a * b), dtype=torch.int64) if topk else x.new_empty(0, dtype=torch.int64),
            vec.clone() if topk or want_max else empty.clone(),
            vec.clone() if history is not None and topk else empty.clone())


@lp_norm_fwd.register_fake
def _(x, weight, bias, history, kind, eps, c, k, beta, ghost_bug, cd, want_max):
    return _fake_lp_outputs(x, history, kind, k, cd, want_max)


@torch.library.custom_op(f"{_LIB}::lp_norm_bwd", mutates_args=())
def lp_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor | None, mu: Tensor, s: Tensor, aux: Tensor, sel: Tensor,
                kind: str, eps: float, c: float, k: int, beta: float, cd: torch.dtype, want_dx: bool
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: (dx or empty, dgamma, dbeta) with the parameter gradients in cd."""
    spec = _spec(kind, eps, c, k, beta, False, False)
    dx, dw, db = compose.lp_backward(dy, x, weight, mu, s, aux if aux.numel() else None,
                                     sel if sel.numel() else None, spec, cd, want_dx)
    return (_or_empty(dx, x), dw, db)


@lp_norm_bwd.register_fake
def _(dy, x, weight, mu, s, aux, sel, kind, eps, c, k, beta, cd, want_dx):
    ch = x.shape[1]
    dx = torch.empty_like(dense(x)) if want_dx else x.new_empty(0)
    return dx, x.new_empty(ch, dtype=cd), x.new_empty(ch, dtype=cd)


def _lp_setup(ctx, inputs, output):
    x, weight, bias, history, kind, eps, c, k, beta, ghost_bug, cd, want_max = inputs
    _y, mu, f, s, aux, sel, mx, h = output
    ctx.mark_non_differentiable(mu, f, s, aux, sel, mx, h)
    ctx.save_for_backward(x, weight, mu, s, aux, sel)
    ctx.args = (kind, eps, c, k, beta, cd)
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _lp_backward(ctx, dy, *_unused):
    x, weight, mu, s, aux, sel = ctx.saved_tensors
    want = ctx.needs_input_grad
    dx, dw, db = torch.ops.normrepro.lp_norm_bwd(dy, x, weight, mu, s, aux, sel, *ctx.args, want[0])
    return (dx if want[0] else None,
            dw.to(ctx.weight_dtype) if ctx.weight_dtype is not None and want[1] else None,
            db.to(ctx.bias_dtype) if ctx.bias_dtype is not None and want[2] else None,
            None, None, None, None, None, None, None, None, None)


lp_norm_fwd.register_autograd(_lp_backward, setup_context=_lp_setup)


# ------------------------------------------------------------------------------------------- statistics only
@torch.library.custom_op(f"{_LIB}::lp_norm_stats", mutates_args=())
def lp_norm_stats(x: Tensor, history: Tensor | None, kind: str, eps: float, c: float, k: int, beta: float,
                  ghost_bug: bool, cd: torch.dtype, want_max: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The batch statistics of lp_norm_fwd without its output: (mu, f, aux, sel, max_dev, history_next)."""
    r = compose.lp_stats(x, history, _spec(kind, eps, c, k, beta, ghost_bug, want_max), cd)
    mu = r.mu
    return (mu, _or_empty(r.f, mu), _or_empty(r.aux, mu), _or_empty(r.sel, mu, torch.int64),
            _or_empty(r.max_dev, mu), _or_empty(r.history, mu))


@lp_norm_stats.register_fake
def _(x, history, kind, eps, c, k, beta, ghost_bug, cd, want_max):
    out = _fake_lp_outputs(x, history, kind, k, cd, want_max)
    return out[1], out[2], out[4], out[5], out[6], out[7]


def _stats_setup(ctx, inputs, output):
    x, _h, kind, eps, c, k, beta, ghost_bug, cd, _want_max = inputs
    mu, _f, aux, sel, mx, h = output
    ctx.mark_non_differentiable(aux, sel, mx, h)
    ctx.save_for_backward(x, mu, aux, sel)
    ctx.spec, ctx.cd = _spec(kind, eps, c, k, beta, ghost_bug, False), cd


def _stats_backward(ctx, g_mu, g_f, *_unused):
    x, mu, aux, sel = ctx.saved_tensors
    dx = FM.stats_input_grad(ctx.spec, x, mu, aux if aux.numel() else None, sel if sel.numel() else None, g_mu, g_f,
                             ctx.cd)
    return (dx,) + (None,) * 9


lp_norm_stats.register_autograd(_stats_backward, setup_context=_stats_setup)


def _split_lp_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, history: Tensor | None, spec: FM.LpSpec,
                   cd: torch.dtype) -> tuple[Tensor, ...]:
    """lp_norm with the statistics as one op and the output as torch ops (fused by inductor with its neighbours)."""
    mu, f, aux, sel, mx, h = torch.ops.normrepro.lp_norm_stats(x, history, spec.kind, spec.eps, spec.c, spec.k,
                                                               spec.beta, spec.ghost_bug, cd, spec.want_max)
    s = FM.scale(spec, f)
    scale = s.reciprocal() if weight is None else weight.to(cd) / s
    y = (x.to(cd) - channel_view(mu, x)) * channel_view(scale, x)
    if bias is not None:
        y = y + channel_view(bias.to(cd), x)
    return y.to(x.dtype), mu, f, s, aux, sel, mx, h


class LpNormFunction(torch.autograd.Function):
    """``compose.lp_forward`` / ``lp_backward`` with collectives ``comm``: lp_norm_fwd's outputs (None where not
    computed), saving what the op saves."""

    @staticmethod
    def forward(ctx, x, weight, bias, history, spec: FM.LpSpec, cd: torch.dtype, comm):
        """(y, mu, f, s, aux, sel, max_dev, history_next)."""
        ctx.set_materialize_grads(False)
        r = compose.lp_forward(x, weight, bias, history, spec, cd, comm)
        ctx.save_for_backward(x, weight, r.mu, r.s, r.aux, r.sel)
        ctx.spec, ctx.cd, ctx.comm = spec, cd, comm
        ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        outs = [t for t in (r.mu, r.f, r.s, r.aux, r.sel, r.max_dev, r.history) if t is not None]
        ctx.mark_non_differentiable(*outs)
        return r.y, r.mu, r.f, r.s, r.aux, r.sel, r.max_dev, r.history

    @staticmethod
    def backward(ctx, dy, *_unused):
        """(dx, dgamma, dbeta) from compose.lp_backward."""
        if dy is None:
            return (None,) * 7
        x, weight, mu, s, aux, sel = ctx.saved_tensors
        want = ctx.needs_input_grad
        dx, dw, db = compose.lp_backward(dy, x, weight, mu, s, aux, sel, ctx.spec, ctx.cd, want[0], ctx.comm)
        wd, bd = ctx.dtypes
        dw = dw.to(wd) if wd is not None and want[1] else None
        db = db.to(bd) if bd is not None and want[2] else None
        return dx if want[0] else None, dw, db, None, None, None, None


COMPILED_MODES = ("split", "opaque")
ENV_COMPILED = "NORMREPRO_COMPILED_NORMS"


def compiled_mode() -> str:
    """How compiled graphs hold a norm (``NORMREPRO_COMPILED_NORMS``): split (default: the statistics one op, the
    elementwise output and gradient torch ops) or opaque (one op for the forward, one for the backward)."""
    mode = os.environ.get(ENV_COMPILED, "split").strip() or "split"
    if mode not in COMPILED_MODES:
        raise choice_error(ENV_COMPILED, mode, COMPILED_MODES)
    return mode


def _use_op(x: Tensor, comm) -> bool:
    return comm.local and (type(x) is not torch.Tensor or torch.compiler.is_compiling())


def lp_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, history: Tensor | None, spec: FM.LpSpec,
            cd: torch.dtype, comm=compose.LOCAL) -> tuple[Tensor | None, ...]:
    """Differentiable Lp batch norm of x (training): (y, mu, f, s, aux, sel, max_dev, history_next), only y carrying
    a gradient; the unused ones are None or empty."""
    if _use_op(x, comm):
        if torch.compiler.is_compiling() and compiled_mode() == "split":
            return _split_lp_norm(x, weight, bias, history, spec, cd)
        return torch.ops.normrepro.lp_norm_fwd(x, weight, bias, history, spec.kind, spec.eps, spec.c, spec.k,
                                               spec.beta, spec.ghost_bug, cd, spec.want_max)
    return LpNormFunction.apply(x, weight, bias, history, spec, cd, comm)


# ------------------------------------------------------------------------------------------- mean-only
@torch.library.custom_op(f"{_LIB}::mean_norm_fwd", mutates_args=())
def mean_norm_fwd(x: Tensor, bias: Tensor | None, cd: torch.dtype, want_max: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Training forward of mean-only BN: (y = x - mu + beta, mu, max|x - mu| or empty)."""
    y, mu, mx = compose.mean_forward(x, bias, cd, want_max)
    return y, mu, _or_empty(mx, mu)


@mean_norm_fwd.register_fake
def _(x, bias, cd, want_max):
    ch = x.shape[1]
    return torch.empty_like(dense(x)), x.new_empty(ch, dtype=cd), x.new_empty(ch if want_max else 0, dtype=cd)


@torch.library.custom_op(f"{_LIB}::mean_norm_bwd", mutates_args=())
def mean_norm_bwd(dy: Tensor, cd: torch.dtype, want_dx: bool) -> tuple[Tensor, Tensor]:
    """Backward of mean-only BN: (dx = dy - mean(dy) or empty, dbeta in cd)."""
    dx, db = compose.mean_backward(dy, cd, want_dx)
    return _or_empty(dx, dy), db


@mean_norm_bwd.register_fake
def _(dy, cd, want_dx):
    return (torch.empty_like(dense(dy)) if want_dx else dy.new_empty(0)), dy.new_empty(dy.shape[1], dtype=cd)


def _mean_setup(ctx, inputs, output):
    _x, bias, cd, _want_max = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.cd = cd
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _mean_backward(ctx, dy, *_unused):
    want = ctx.needs_input_grad
    dx, db = torch.ops.normrepro.mean_norm_bwd(dy, ctx.cd, want[0])
    return (dx if want[0] else None, db.to(ctx.bias_dtype) if ctx.bias_dtype is not None and want[1] else None,
            None, None)


mean_norm_fwd.register_autograd(_mean_backward, setup_context=_mean_setup)


class MeanNormFunction(torch.autograd.Function):
    """``compose.mean_forward`` / ``mean_backward`` with collectives ``comm``: (y, mu, max_dev or None)."""

    @staticmethod
    def forward(ctx, x, bias, cd: torch.dtype, want_max: bool, comm):
        """(y = x - mu + beta, mu, max|x - mu| or None)."""
        ctx.set_materialize_grads(False)
        y, mu, mx = compose.mean_forward(x, bias, cd, want_max, comm)
        ctx.cd, ctx.comm, ctx.bias_dtype = cd, comm, None if bias is None else bias.dtype
        ctx.mark_non_differentiable(*[t for t in (mu, mx) if t is not None])
        return y, mu, mx

    @staticmethod
    def backward(ctx, dy, *_unused):
        """dx = dy - mean(dy), dbeta = sum(dy) (this process's share)."""
        if dy is None:
            return (None,) * 5
        want = ctx.needs_input_grad
        dx, db = compose.mean_backward(dy, ctx.cd, want[0], ctx.comm)
        return dx, db.to(ctx.bias_dtype) if ctx.bias_dtype is not None and want[1] else None, None, None, None


@torch.library.custom_op(f"{_LIB}::mean_norm_stats", mutates_args=())
def mean_norm_stats(x: Tensor, cd: torch.dtype, want_max: bool) -> tuple[Tensor, Tensor]:
    """The batch mean of mean_norm_fwd without its output: (mu, max|x - mu| or empty)."""
    mu, mx = compose.mean_stats(x, cd, want_max)
    return mu, _or_empty(mx, mu)


@mean_norm_stats.register_fake
def _(x, cd, want_max):
    ch = x.shape[1]
    return x.new_empty(ch, dtype=cd), x.new_empty(ch if want_max else 0, dtype=cd)


def _mean_stats_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.x_meta = (inputs[0].shape, inputs[0].dtype)


def _mean_stats_backward(ctx, g_mu, _g_max):
    shape, dtype = ctx.x_meta
    n = shape.numel() // shape[1]
    return (g_mu / n).view(1, -1, *([1] * (len(shape) - 2))).expand(shape).to(dtype), None, None


mean_norm_stats.register_autograd(_mean_stats_backward, setup_context=_mean_stats_setup)


def mean_norm(x: Tensor, bias: Tensor | None, cd: torch.dtype, want_max: bool = False,
              comm=compose.LOCAL) -> tuple[Tensor | None, ...]:
    """Differentiable mean-only batch norm of x (training): (y, mu, max_dev: None or empty when not asked)."""
    if _use_op(x, comm):
        if torch.compiler.is_compiling() and compiled_mode() == "split":
            mu, mx = torch.ops.normrepro.mean_norm_stats(x, cd, want_max)
            y = x.to(cd) - channel_view(mu, x)
            if bias is not None:
                y = y + channel_view(bias.to(cd), x)
            return y.to(x.dtype), mu, mx
        return torch.ops.normrepro.mean_norm_fwd(x, bias, cd, want_max)
    return MeanNormFunction.apply(x, bias, cd, want_max, comm)
