"""The norm primitives (docs: the primitive API in ``normrepro/norms/compose.py``) written as torch ops: the
"torch" backend, which runs on any device and dtype.

Tensors ``x3``/``dy3``/``out3`` are (A, C, B) views with any strides; per-channel vectors are (C,) in the compute
dtype ``cd``. Elementwise math runs in ``cd`` (so float16 squares overflow as the paper's naive L2 does); sums are
accumulated in ``acc(cd)`` (float32, float64 for float64).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
NAME = "torch"


def acc(cd: torch.dtype) -> torch.dtype:
    """The accumulation dtype of sums in ``cd``: float64 for float64, else float32."""
    return torch.float64 if cd == torch.float64 else torch.float32


def _v(t: Tensor) -> Tensor:
    return t.view(1, -1, 1)


def _in(t: Tensor, cd: torch.dtype) -> Tensor:
    return t if t.dtype == cd else t.to(cd)


def _dev(x3: Tensor, mu: Tensor, cd: torch.dtype) -> Tensor:
    return _in(x3, cd) - _v(mu)


def channel_sums(x3: Tensor, cd: torch.dtype) -> Tensor:
    """(C,) sum of x per channel, in acc(cd)."""
    return _in(x3, cd).sum((0, 2), dtype=acc(cd))


def dev_stats(x3: Tensor, mu: Tensor, cd: torch.dtype, *, want_abs: bool, want_sign: bool, want_sq: bool,
              want_max: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Per channel (sum |d|, sum sign(d), sum d*d, max |d|), d = x - mu; sums in acc(cd), max in cd."""
    d = _dev(x3, mu, cd)
    a = acc(cd)
    sq = (d * d).sum((0, 2), dtype=a) if want_sq else None
    sgn = d.sign().sum((0, 2), dtype=a) if want_sign else None
    ad = d.abs_() if want_abs or want_max else None
    s_abs = ad.sum((0, 2), dtype=a) if want_abs else None
    mx = None
    if want_max:
        mx = ad.amax((0, 2)) if ad.numel() else ad.new_zeros(ad.shape[1])
    return s_abs, sgn, sq, mx


def topk_dev(x3: Tensor, mu: Tensor, k: int, cd: torch.dtype) -> tuple[Tensor, Tensor]:
    """((C, k) signed d in cd, (C, k) int64 index i = a*B + b) of the k largest |d| per channel, |d| descending."""
    a, c, b = x3.shape
    d = _dev(x3, mu, cd).transpose(0, 1).reshape(c, a * b)
    idx = d.abs().topk(k, dim=1).indices
    return d.gather(1, idx), idx


def _target(out3: Tensor, cd: torch.dtype) -> Tensor:
    """out3 itself when it is in cd, else a cd buffer of its shape (copied into out3 at the end)."""
    return out3 if out3.dtype == cd else torch.empty(out3.shape, dtype=cd, device=out3.device)


def normalize(x3: Tensor, mu: Tensor, scale: Tensor, shift: Tensor | None, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = (x - mu) * scale + shift (shift None: 0), computed in cd, stored in out3's dtype."""
    y = _target(out3, cd)
    torch.sub(_in(x3, cd), _v(mu), out=y).mul_(_v(scale))
    if shift is not None:
        y.add_(_v(shift))
    if y is not out3:
        out3.copy_(y)


def grad_sums(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, cd: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(sum dy, sum dy*d) per channel in acc(cd), d = x - mu (the second is None when x3 is None)."""
    g = _in(dy3, cd)
    s1 = g.sum((0, 2), dtype=acc(cd))
    s2 = None if x3 is None else (g * _dev(x3, mu, cd)).sum((0, 2), dtype=acc(cd))
    return s1, s2


def input_grad(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, a: Tensor, kd: Tensor | None, ks: Tensor | None,
               c0: Tensor, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = a*dy + kd*d + ks*sign(d) + c0 per channel (kd / ks None: 0), computed in cd, stored in out3's dtype."""
    y = _target(out3, cd)
    torch.mul(_in(dy3, cd), _v(a), out=y)
    if kd is not None or ks is not None:
        d = _dev(x3, mu, cd)
        if kd is not None:
            y.addcmul_(d, _v(kd))
        if ks is not None:
            y.addcmul_(d.sign_(), _v(ks))
    y.add_(_v(c0))
    if y is not out3:
        out3.copy_(y)
