"""The formulas of the batch norms (docs/paper.md §1.3), each written once: how the per-channel partial sums of
the primitives become the scale s, the next ghost history and the coefficients of the backward.

Per channel over the n values of the batch: mu = mean(x), d = x - mu, and a statistic of d:
    l1    stat = mean|d|                           f = c * stat          (c = l1_scale * sqrt(pi/2))
    topk  stat = T = mean of the k largest |d|     f = C(n) * ((1 - beta) * T + beta * h)
          (beta = 0: Top-k, L-inf is k = 1; beta > 0: the ghost Top-k with history h, detached)
    l2    stat = mean d^2                          f = stat
s = f + eps (l2: sqrt(f + eps)), y = gamma * d / s + beta_bias. Written as f = f0 + cscale * stat, so the fused
CPU kernels take the same two numbers (``scale_terms``).
Backward, with a = gamma / s, q = gamma * mean(dy * d) / s^2 and phi_j = ds / dd_j:
    dL/dx_j = a * (dy_j - mean dy) - q * n * (phi_j - mean phi), in per-channel coefficients:
    l1    dx = a*dy + ks*sign(d) + c0,  ks = -c*q,  c0 = -a*mean(dy) - ks*mean(sign d)
    l2    dx = a*dy + kd*d + c0,        kd = -q/s,  c0 = -a*mean(dy)
    topk  dx = a*dy + c0 + w_j at the k selected values, c0 = -a*mean(dy) + q*(cscale/k)*sum_sel sign(d),
          w_j = -q*cscale*n/k * sign(d_j), cscale = C(n)*(1 - beta)
    mean  dx = dy - mean(dy)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.norms.constants import C_L1, c_linf

Tensor = torch.Tensor
KINDS = ("l1", "topk", "l2")


@dataclass(frozen=True)
class LpSpec:
    """What defines one Lp norm's batch statistics: kind (l1 | topk | l2), eps, the L1 constant c, k, the ghost
    history weight beta (0: none), ghost_bug (the authors' history update) and want_max (also return max|d|)."""
    kind: str
    eps: float
    c: float = C_L1
    k: int = 10
    beta: float = 0.0
    ghost_bug: bool = False
    want_max: bool = False


def stat_scale(spec: LpSpec, n) -> float:
    """cscale = df / dstat for a batch of n values per channel: c (l1), 1 (l2), C(n) * (1 - beta) (topk)."""
    if spec.kind == "l1":
        return spec.c
    if spec.kind == "l2":
        return 1.0
    return c_linf(int(n)) * (1.0 - spec.beta)


def scale_terms(spec: LpSpec, n, history: Tensor | None) -> tuple[float, Tensor | None]:
    """(cscale, f0) of f = f0 + cscale * stat (f0 None: 0; the ghost's f0 = C(n) * beta * h)."""
    f0 = None
    if spec.kind == "topk" and spec.beta != 0.0 and history is not None:
        f0 = (c_linf(int(n)) * spec.beta) * history
    return stat_scale(spec, n), f0


def finalize(spec: LpSpec, stat: Tensor, n, history: Tensor | None) -> Tensor:
    """f, the scale estimate without eps, from the per-channel statistic (see the module docstring)."""
    cscale, f0 = scale_terms(spec, n, history)
    f = stat * cscale
    return f if f0 is None else f + f0


def scale(spec: LpSpec, f: Tensor) -> Tensor:
    """s = f + eps, for l2 sqrt(f + eps)."""
    return (f + spec.eps).sqrt() if spec.kind == "l2" else f + spec.eps


def next_history(spec: LpSpec, stat: Tensor, n, history: Tensor) -> Tensor:
    """The ghost history after this batch: h = beta*h + (1 - beta)*T; with ghost_bug the authors' C(n)*(...), so
    that their s = h + eps multiplies by C(n) once more at every step."""
    h = history * spec.beta + stat * (1.0 - spec.beta)
    return h * c_linf(int(n)) if spec.ghost_bug else h


def topk_mean(dev: Tensor) -> Tensor:
    """T: the mean |d| of the (C, k) selected deviations."""
    return dev.abs().mean(1)


def sign_sum(dev: Tensor) -> Tensor:
    """Per channel the sum of the signs of the (C, k) selected deviations (NaN padding counts 0)."""
    return torch.nan_to_num(dev.sign(), nan=0.0).sum(1)


@dataclass(frozen=True)
class InputGradCoefs:
    """dx = a*dy + kd*d + ks*sign(d) + c0 per channel, plus wq*sign(d_j) at the selected values (Top-k)."""
    a: Tensor
    kd: Tensor | None
    ks: Tensor | None
    c0: Tensor
    wq: Tensor | None


def lp_input_grad_coefs(spec: LpSpec, n, k: int, s: Tensor, gamma: Tensor | None, mean_dy: Tensor,
                        mean_dyd: Tensor, aux: Tensor | None) -> InputGradCoefs:
    """The backward's per-channel coefficients (module docstring). aux: mean sign(d) (l1), the sum of the selected
    signs (topk), unused (l2)."""
    a = s.reciprocal() if gamma is None else gamma / s
    q = mean_dyd / s / s
    if gamma is not None:
        q = q * gamma
    if spec.kind == "l1":
        ks = -spec.c * q
        return InputGradCoefs(a, None, ks, -a * mean_dy - ks * aux, None)
    if spec.kind == "l2":
        return InputGradCoefs(a, -q / s, None, -a * mean_dy, None)
    cscale = stat_scale(spec, n)
    c0 = -a * mean_dy + (q * (cscale / k)) * aux
    return InputGradCoefs(a, None, None, c0, -q * (cscale * n / k))


def stats_input_grad(spec: LpSpec, x: Tensor, mu: Tensor, aux: Tensor | None, sel: Tensor | None,
                     g_mu: Tensor | None, g_f: Tensor | None, cd: torch.dtype) -> Tensor:
    """dL/dx through the statistics alone, given dL/dmu and dL/df (torch ops on x's full shape, for inductor):
    dmu/dx_j = 1/n;  df/dx_j = (c/n)(sign d_j - mean sign) (l1), 2 d_j / n (l2),
    (cscale/k)(sign d_j [j selected] - sum_sel sign / n) (topk)."""
    c = x.shape[1]
    n = x.numel() // c
    shape = (1, c) + (1,) * (x.dim() - 2)
    g_mu = torch.zeros_like(mu) if g_mu is None else g_mu.to(cd)
    g_f = torch.zeros_like(mu) if g_f is None else g_f.to(cd)
    d = x.to(cd) - mu.view(shape)
    if spec.kind == "l1":
        cs = spec.c / n
        dx = (g_mu / n - g_f * cs * aux).view(shape) + (g_f * cs).view(shape) * d.sign()
    elif spec.kind == "l2":
        dx = (g_mu / n).view(shape) + (g_f * (2.0 / n)).view(shape) * d
    else:
        from normrepro.norms.layout import view3

        idx, sgn = decode_selection(sel, cd)
        k = sel.shape[1]
        cscale = stat_scale(spec, n)
        base = g_mu / n - g_f * (cscale / (k * n)) * sgn.sum(1)
        dx = torch.empty_like(x, dtype=cd)
        dx.copy_(base.view(shape).expand_as(x))
        dx3 = view3(dx)
        b = dx3.shape[2]
        ch = torch.arange(c, device=x.device).unsqueeze(1).expand(c, k)
        dx3.index_put_((idx // b, ch, idx % b), (g_f * (cscale / k)).unsqueeze(1) * sgn, accumulate=True)
    return dx.to(x.dtype)


def encode_selection(idx: Tensor, dev: Tensor) -> Tensor:
    """The k selected indices and the signs of their deviations in one int64 tensor, (idx + 1) * sign(d), so the
    backward keeps no more than BatchNorm's bytes for L-inf (0: nothing selected or a zero deviation, no gradient)."""
    return (idx + 1) * torch.nan_to_num(dev.sign(), nan=0.0).to(torch.int64)


def decode_selection(code: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(indices, signs in ``dtype``) from ``encode_selection``."""
    return (code.abs() - 1).clamp_min_(0), code.sign().to(dtype)
