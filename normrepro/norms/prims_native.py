"""The norm primitives (the API in ``normrepro/norms/compose.py``) on the C++ CPU kernels of ``_kernels.cpp``:
the "native" backend, for CPU tensors computed in float32 or float64.

The kernels see a tensor as a contiguous (A, C, B) array (what ``layout.view3`` gives for NCHW, channels-last and
(N, C) input); other strides are copied first. Sums are accumulated in double inside the kernels and returned in
cd. Besides the primitives, ``fused_forward`` / ``fused_backward`` do L1 or Top-k statistics + output (sums + dx)
in one call per channel group; the composition uses them when no collective sits between the primitives.
"""
from __future__ import annotations

import torch

from normrepro.norms import _native

Tensor = torch.Tensor
NAME = "native"
DTYPES = (torch.float32, torch.float64)
KINDS = {"l1": 0, "topk": 1}  # the fused kernels' ``kind``


def usable() -> bool:
    """Whether the kernels can run here (NORMREPRO_NATIVE not off and the library builds)."""
    return _native.enabled() and _native.lib() is not None


def unusable_reason() -> str:
    """Why ``usable()`` is False ('' when it is True)."""
    if not _native.enabled():
        return "the native kernels are switched off by NORMREPRO_NATIVE=0"
    if _native.lib() is None:
        return f"the native CPU kernels could not be built ({_native.error()})"
    return ""


def supports(t: Tensor, cd: torch.dtype) -> bool:
    """Whether this backend computes on t (a plain CPU tensor) in cd."""
    return cd in DTYPES and t.device.type == "cpu" and type(t) is torch.Tensor


def _nt() -> int:
    return torch.get_num_threads()


def _arr(t: Tensor | None, cd: torch.dtype) -> Tensor | None:
    """t as a contiguous array in cd (None stays None)."""
    if t is None:
        return None
    if t.dtype != cd:
        t = t.to(cd)
    return t if t.is_contiguous() else t.contiguous()


def _out(out3: Tensor, cd: torch.dtype) -> Tensor:
    """out3 itself when the kernels can write into it, else a contiguous buffer in cd."""
    return out3 if out3.dtype == cd and out3.is_contiguous() else torch.empty(out3.shape, dtype=cd)


def _store(buf: Tensor, out3: Tensor) -> None:
    if buf is not out3:
        out3.copy_(buf)


def channel_sums(x3: Tensor, cd: torch.dtype) -> Tensor:
    """(C,) sum of x per channel, in cd."""
    x3 = _arr(x3, cd)
    a, c, b = x3.shape
    out = x3.new_empty(c)
    _native.call("nr_sums", cd, x3, a, c, b, out, _nt())
    return out


def dev_stats(x3: Tensor, mu: Tensor, cd: torch.dtype, *, want_abs: bool, want_sign: bool, want_sq: bool,
              want_max: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Per channel (sum |d|, sum sign(d), sum d*d, max |d|), d = x - mu; None where not wanted."""
    x3 = _arr(x3, cd)
    a, c, b = x3.shape
    outs = [x3.new_empty(c) if want else None for want in (want_abs, want_sign, want_sq, want_max)]
    if a * b == 0:
        return tuple(None if o is None else o.zero_() for o in outs)
    _native.call("nr_dev_stats", cd, x3, a, c, b, _arr(mu, cd), *outs, _nt())
    return tuple(outs)


def topk_dev(x3: Tensor, mu: Tensor, k: int, cd: torch.dtype) -> tuple[Tensor, Tensor]:
    """((C, k) signed d, (C, k) int64 index i = a*B + b) of the k largest |d| per channel, |d| descending."""
    x3 = _arr(x3, cd)
    a, c, b = x3.shape
    dev = x3.new_empty(c, k)
    idx = torch.empty(c, k, dtype=torch.int64)
    if k:
        _native.call("nr_topk", cd, x3, a, c, b, _arr(mu, cd), k, dev, idx, _nt())
    return dev, idx


def normalize(x3: Tensor, mu: Tensor, scale: Tensor, shift: Tensor | None, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = (x - mu) * scale + shift (shift None: 0), computed in cd, stored in out3's dtype."""
    x3 = _arr(x3, cd)
    a, c, b = x3.shape
    buf = _out(out3, cd)
    _native.call("nr_affine", cd, x3, a, c, b, _arr(mu, cd), _arr(scale, cd), _arr(shift, cd), buf, _nt())
    _store(buf, out3)


def grad_sums(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, cd: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(sum dy, sum dy*d) per channel in cd, d = x - mu (the second is None when x3 is None)."""
    dy3 = _arr(dy3, cd)
    a, c, b = dy3.shape
    s1 = dy3.new_empty(c)
    s2 = None if x3 is None else dy3.new_empty(c)
    _native.call("nr_grad_sums", cd, _arr(x3, cd), dy3, a, c, b, _arr(mu, cd), s1, s2, _nt())
    return s1, s2


def input_grad(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, a: Tensor, kd: Tensor | None, ks: Tensor | None,
               c0: Tensor, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = a*dy + kd*d + ks*sign(d) + c0 per channel (kd / ks None: 0), computed in cd."""
    dy3 = _arr(dy3, cd)
    na, c, b = dy3.shape
    buf = _out(out3, cd)
    uses_x = kd is not None or ks is not None
    _native.call("nr_input_grad", cd, _arr(x3, cd) if uses_x else None, dy3, na, c, b,
                 _arr(mu, cd) if uses_x else None, _arr(a, cd), _arr(kd, cd), _arr(ks, cd), _arr(c0, cd), buf, _nt())
    _store(buf, out3)


def scatter_add(out3: Tensor, idx: Tensor, w: Tensor) -> None:
    """out3[i // B, c, i % B] += w[c, j] for the (C, k) indices i = idx[c, j] (out3 contiguous, in w's dtype)."""
    a, c, b = out3.shape
    _native.call("nr_scatter_add", out3.dtype, out3, a, c, b, idx.shape[1], _arr(idx, torch.int64),
                 _arr(w, out3.dtype))


def fusable(xd: Tensor, kind: str, cd: torch.dtype) -> bool:
    """Whether ``fused_forward``/``fused_backward`` apply: an L1 or Top-k norm of a dense x (``layout.dense``) in cd."""
    return kind in KINDS and xd.dtype == cd


def fused_forward(kind: str, xd: Tensor, geom: tuple[int, int, int], gamma: Tensor | None, beta: Tensor | None,
                  f0: Tensor | None, eps: float, cscale: float, k: int, want_max: bool, want_stat: bool, y: Tensor):
    """Statistics and output in one call on a dense x with (A, C, B) = geom: f = f0 + cscale * stat (stat: mean|d|
    for l1, the mean of the k largest |d| for topk), s = f + eps, y = gamma*(x - mu)/s + beta written into y (x's
    strides, cd = x's dtype). Returns (mu, f, s, aux, max_dev, stat): aux = mean sign(d) (l1) or the (C, k)
    selection codes of ``formulas.encode_selection`` (topk, whose max_dev is always returned); max_dev / stat None
    when not asked."""
    cd = xd.dtype
    a, c, b = geom
    mu, f, s = xd.new_empty(c), xd.new_empty(c), xd.new_empty(c)
    topk = kind == "topk"
    aux1 = xd.new_empty(c, k) if topk else xd.new_empty(c)
    code = torch.empty(c, k, dtype=torch.int64) if topk else None
    max_dev = xd.new_empty(c) if want_max or topk else None
    stat = xd.new_empty(c) if want_stat else None
    _native.call("nr_fwd", cd, KINDS[kind], xd, a, c, b, _arr(gamma, cd), _arr(beta, cd), _arr(f0, cd), eps, cscale,
                 k, y, mu, f, s, aux1, code, max_dev, stat, _nt())
    return mu, f, s, (code if topk else aux1), max_dev, stat


def fused_backward(kind: str, xd: Tensor, dyd: Tensor, geom: tuple[int, int, int], mu: Tensor, s: Tensor,
                   gamma: Tensor | None, cscale: float, aux: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """Sums and dx in one call (formulas of ``formulas.lp_input_grad_coefs``) on dense x, dy and dx of the same
    strides and (A, C, B) = geom: writes dx and returns (sum dy, sum dy*d). aux: mean sign(d) (l1) or the (C, k)
    selection codes (topk)."""
    cd = xd.dtype
    a, c, b = geom
    s1, s2 = xd.new_empty(c), xd.new_empty(c)
    topk = kind == "topk"
    k = aux.shape[1] if topk else 1
    _native.call("nr_bwd", cd, KINDS[kind], xd, dyd, a, c, b, _arr(mu, cd), _arr(s, cd), _arr(gamma, cd), cscale, k,
                 None if topk else _arr(aux, cd), _arr(aux, torch.int64) if topk else None, dx, s1, s2, _nt())
    return s1, s2
