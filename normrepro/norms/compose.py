"""Every batch norm's forward and backward composed from per-channel primitives, with the collectives of a
synchronized norm (``comm``) between them:

    forward:  sums = channel_sums(x3)           -> comm.sum_count -> mu = sums / n
              dev_stats(x3, mu)  (l1, l2)       -> comm.sum / comm.max
              topk_dev(x3, mu, k) (topk)        -> comm.topk: the global top-k of the candidates
              formulas.finalize / scale (torch, per channel), then normalize(x3, mu, gamma/s, beta, y3)
    backward: grad_sums(x3, dy3, mu)            -> comm.sum_count   (mean-only BN: channel_sums(dy3))
              formulas.lp_input_grad_coefs (torch), input_grad(x3, dy3, mu, a, kd, ks, c0, dx3)
              (+ Top-k: scatter-add at the selected values)
``lp_stats`` / ``mean_stats`` are the forward's statistics alone (the ``split`` form of compiled graphs).

A backend (``backends.primitives``) is a module with these functions (tensors x3, dy3, out3: (A, C, B) views with
any strides; per-channel vectors (C,) in the compute dtype cd; sums in float32, float64 for cd float64):
    channel_sums(x3, cd) -> sums
    dev_stats(x3, mu, cd, *, want_abs, want_sign, want_sq, want_max) -> (sum|d|, sum sign d, sum d^2, max|d|)
    topk_dev(x3, mu, k, cd) -> ((C, k) signed d, (C, k) int64 index a*B + b), |d| descending
    normalize(x3, mu, scale, shift, out3, cd)          out3 = (x - mu) * scale + shift
    grad_sums(x3, dy3, mu, cd) -> (sum dy, sum dy*d)
    input_grad(x3, dy3, mu, a, kd, ks, c0, out3, cd)   out3 = a*dy + kd*d + ks*sign(d) + c0
and optionally ``scatter_add`` and the fused ``fused_forward``/``fused_backward`` (+ ``fusable``; on the dense
tensors and their (A, C, B) geometry), used only without collectives. ``LOCAL`` is the no-collective ``comm``
(one process); ``sync.Collectives`` the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.norms import backends
from normrepro.norms import formulas as FM
from normrepro.norms.layout import dense, geometry, like, view3

Tensor = torch.Tensor


class Local:
    """The collectives of a single process: none (the statistics of this batch). ``fuse``: let a backend's fused
    kernels replace the composed primitives (``Local(fuse=False)`` runs the primitives one by one)."""

    local = True

    def __init__(self, fuse: bool = True):
        self.fuse = fuse

    def sum_count(self, parts: list[Tensor], count: int) -> tuple[list[Tensor], int]:
        """(the sums of ``parts`` over all processes, the total count): here the inputs."""
        return parts, count

    def sum(self, parts: list[Tensor]) -> list[Tensor]:
        """The sums of ``parts`` over all processes: here the inputs."""
        return parts

    def max(self, t: Tensor) -> Tensor:
        """The maximum of ``t`` over all processes: here t."""
        return t

    def topk(self, dev: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """(the (C, k) globally selected signed deviations, this process's share as ``encode_selection`` codes, the
        global sum of the selected signs or None when the codes hold them all)."""
        return dev, FM.encode_selection(idx, dev), None


LOCAL = Local()


@dataclass
class LpForward:
    """Results of an Lp norm's training forward; None where not computed."""
    y: Tensor | None     # the output, x's dtype and layout (None: statistics only)
    mu: Tensor           # (C,) batch mean, cd
    f: Tensor            # (C,) the scale without eps (running_scale follows it), cd
    s: Tensor            # (C,) the denominator, cd
    aux: Tensor | None   # (C,) l1: mean sign(d); topk with collectives: the global sum of the selected signs
    sel: Tensor | None   # (C, k) int64 topk: this process's selected values (encode_selection)
    max_dev: Tensor | None  # (C,) max |d| (topk: always; others when spec.want_max)
    history: Tensor | None  # (C,) the ghost history after this batch


def _vec(t: Tensor | None, cd: torch.dtype) -> Tensor | None:
    if t is None:
        return None
    t = t.detach()
    t = t if t.dtype == cd else t.to(cd)
    return t if t.is_contiguous() else t.contiguous()


def _fused(P, xd: Tensor, kind: str, cd: torch.dtype, comm) -> bool:
    return comm.fuse and hasattr(P, "fused_forward") and P.fusable(xd, kind, cd)


def lp_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, history: Tensor | None, spec: FM.LpSpec,
               cd: torch.dtype, comm=LOCAL) -> LpForward:
    """Training forward of an Lp batch norm (``spec``) of x (N, C, ...) with statistics in cd."""
    xd = dense(x)
    P = backends.primitives(xd, cd)
    gamma, beta, hist = _vec(weight, cd), _vec(bias, cd), _vec(history, cd)
    y = torch.empty_like(xd)
    if _fused(P, xd, spec.kind, cd, comm):
        return _fused_forward(P, xd, y, gamma, beta, hist, spec)
    x3, y3 = view3(xd), view3(y)
    r = _stats(P, x3, hist, spec, cd, comm)
    P.normalize(x3, r.mu, r.s.reciprocal() if gamma is None else gamma / r.s, beta, y3, cd)
    r.y = y
    return r


def lp_stats(x: Tensor, history: Tensor | None, spec: FM.LpSpec, cd: torch.dtype, comm=LOCAL) -> LpForward:
    """The batch statistics of ``lp_forward`` without its output (``y`` is None)."""
    xd = dense(x)
    return _stats(backends.primitives(xd, cd), view3(xd), _vec(history, cd), spec, cd, comm)


def _stats(P, x3: Tensor, hist: Tensor | None, spec: FM.LpSpec, cd: torch.dtype, comm) -> LpForward:
    n_local = x3.shape[0] * x3.shape[2]
    (sums,), n = comm.sum_count([P.channel_sums(x3, cd)], n_local)
    mu = (sums / n).to(cd)
    aux = sel = max_dev = None
    if spec.kind == "topk":
        k = min(spec.k, int(n))
        dev, idx = P.topk_dev(x3, mu, min(k, n_local), cd)
        dev, sel, aux = comm.topk(dev, idx, k)
        stat, max_dev = FM.topk_mean(dev), dev[:, 0].abs()
    else:
        l1 = spec.kind == "l1"
        s_abs, s_sign, s_sq, max_dev = P.dev_stats(x3, mu, cd, want_abs=l1, want_sign=l1, want_sq=not l1,
                                                   want_max=spec.want_max)
        if l1:
            s_abs, s_sign = comm.sum([s_abs, s_sign])
            stat, aux = s_abs / n, (s_sign / n).to(cd)
        else:
            (s_sq,) = comm.sum([s_sq])
            stat = s_sq / n
        stat = stat.to(cd)
        if max_dev is not None:
            max_dev = comm.max(max_dev)
    f = FM.finalize(spec, stat, n, hist)
    h_next = FM.next_history(spec, stat, n, hist) if hist is not None else None
    return LpForward(None, mu, f, FM.scale(spec, f), aux, sel, max_dev, h_next)


def _fused_forward(P, xd, y, gamma, beta, hist, spec: FM.LpSpec) -> LpForward:
    """lp_forward through the backend's fused kernel (same formulas: f = f0 + cscale * stat) on the dense x itself
    (its (A, C, B) geometry, no views)."""
    geom = geometry(xd)
    n = geom[0] * geom[2]
    cscale, f0 = FM.scale_terms(spec, n, hist)
    mu, f, s, aux, max_dev, stat = P.fused_forward(spec.kind, xd, geom, gamma, beta, f0, spec.eps, cscale,
                                                   min(spec.k, n), spec.want_max, hist is not None, y)
    if spec.kind != "topk":
        return LpForward(y, mu, f, s, aux, None, max_dev, None)
    h_next = FM.next_history(spec, stat, n, hist) if hist is not None else None
    return LpForward(y, mu, f, s, None, aux, max_dev, h_next)


def lp_backward(dy: Tensor, x: Tensor, weight: Tensor | None, mu: Tensor, s: Tensor, aux: Tensor | None,
                sel: Tensor | None, spec: FM.LpSpec, cd: torch.dtype, want_dx: bool = True,
                comm=LOCAL) -> tuple[Tensor | None, Tensor, Tensor]:
    """(dL/dx in x's dtype or None, dL/dgamma, dL/dbeta in cd) of ``lp_forward`` (this process's share of the
    parameter gradients: n_local / n times the global sums, which DDP's all-reduce adds up)."""
    xd = dense(x)
    dyd = like(dy, xd)
    P = backends.primitives(xd, cd)
    gamma = _vec(weight, cd)
    if want_dx and _fused(P, xd, spec.kind, cd, comm) and dyd.dtype == cd:
        return _fused_backward(P, xd, dyd, gamma, mu, s, aux, sel, spec)
    x3, dy3 = view3(xd), view3(dyd)
    n_local = x3.shape[0] * x3.shape[2]
    if spec.kind == "topk" and aux is None:  # a single process: the signs of its own selection
        aux = FM.decode_selection(sel, cd)[1].sum(1)
    s1, s2 = P.grad_sums(x3, dy3, mu, cd)
    (s1, s2), n = comm.sum_count([s1, s2], n_local)
    mean_dy, mean_dyd = (s1 / n).to(cd), (s2 / n).to(cd)
    dx = None
    if want_dx:
        k = sel.shape[1] if sel is not None else 1
        co = FM.lp_input_grad_coefs(spec, n, k, s, gamma, mean_dy, mean_dyd, aux)
        topk_extra = co.wq is not None and x.dtype != cd  # the scatter-add is done in cd too
        dx = torch.empty_like(xd, dtype=cd if topk_extra else xd.dtype)
        dx3 = view3(dx)
        P.input_grad(x3, dy3, mu, co.a, co.kd, co.ks, co.c0, dx3, cd)
        if co.wq is not None:
            idx, sgn = FM.decode_selection(sel, cd)
            _scatter_add(P, dx3, idx, co.wq.unsqueeze(1) * sgn)
        if topk_extra:
            dx = dx.to(xd.dtype)
    return dx, mean_dyd / s * n_local, mean_dy * n_local


def _fused_backward(P, xd, dyd, gamma, mu, s, aux, sel, spec: FM.LpSpec):
    geom = geometry(xd)
    dx = torch.empty_like(xd)
    s1, s2 = P.fused_backward(spec.kind, xd, dyd, geom, mu, s, gamma, FM.stat_scale(spec, geom[0] * geom[2]),
                              sel if spec.kind == "topk" else aux, dx)
    return dx, s2 / s, s1


def _scatter_add(P, dx3: Tensor, idx: Tensor, w: Tensor) -> None:
    """dx3[i // B, c, i % B] += w[c, j] at the (C, k) selected indices i = idx[c, j]."""
    if hasattr(P, "scatter_add") and dx3.is_contiguous():
        P.scatter_add(dx3, idx, w.to(dx3.dtype))
        return
    c, k = idx.shape
    b = dx3.shape[2]
    ch = torch.arange(c, device=idx.device).unsqueeze(1).expand(c, k)
    dx3.index_put_((idx // b, ch, idx % b), w.to(dx3.dtype), accumulate=True)


def mean_forward(x: Tensor, bias: Tensor | None, cd: torch.dtype, want_max: bool = False,
                 comm=LOCAL) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mean-only batch norm, training: (y = x - mu + beta, mu, max|x - mu| or None)."""
    xd = dense(x)
    x3 = view3(xd)
    P = backends.primitives(xd, cd)
    mu, max_dev = _mean_stats(P, x3, cd, want_max, comm)
    y = torch.empty_like(xd)
    P.normalize(x3, mu, torch.ones_like(mu), _vec(bias, cd), view3(y), cd)
    return y, mu, max_dev


def mean_stats(x: Tensor, cd: torch.dtype, want_max: bool = False, comm=LOCAL) -> tuple[Tensor, Tensor | None]:
    """(mu, max|x - mu| or None) of ``mean_forward`` without its output."""
    xd = dense(x)
    return _mean_stats(backends.primitives(xd, cd), view3(xd), cd, want_max, comm)


def _mean_stats(P, x3: Tensor, cd: torch.dtype, want_max: bool, comm) -> tuple[Tensor, Tensor | None]:
    (sums,), n = comm.sum_count([P.channel_sums(x3, cd)], x3.shape[0] * x3.shape[2])
    mu = (sums / n).to(cd)
    max_dev = None
    if want_max:
        max_dev = comm.max(P.dev_stats(x3, mu, cd, want_abs=False, want_sign=False, want_sq=False,
                                       want_max=True)[3])
    return mu, max_dev


def mean_backward(dy: Tensor, cd: torch.dtype, want_dx: bool = True, comm=LOCAL) -> tuple[Tensor | None, Tensor]:
    """(dL/dx = dy - mean(dy) or None, dL/dbeta in cd: this process's share, as in ``lp_backward``)."""
    dyd = dense(dy)
    dy3 = view3(dyd)
    P = backends.primitives(dyd, cd)
    n_local = dy3.shape[0] * dy3.shape[2]
    (s1,), n = comm.sum_count([P.channel_sums(dy3, cd)], n_local)  # sum dy
    mean_dy = (s1 / n).to(cd)
    dx = None
    if want_dx:
        dx = torch.empty_like(dyd)
        P.input_grad(None, dy3, None, torch.ones_like(mean_dy), None, None, -mean_dy, view3(dx), cd)
    return dx, mean_dy * n_local
