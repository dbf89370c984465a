"""The norm primitives of the primitive API (channel_sums, dev_stats, topk_dev, normalize, grad_sums,
input_grad) as launches of the Triton kernels; partial results per program are reduced here with torch."""
from __future__ import annotations

import torch

from normrepro.norms.triton_kernels import runtime, tiles

Tensor = torch.Tensor
_SLOTS = ("x", "abs", "sign", "sq", "max", "dy", "dyd")


def _check3(name: str, t: Tensor, like: Tensor | None = None) -> None:
    if t.dim() != 3:
        raise ValueError(f"triton {name}: expected a 3-D (A, C, B) view, got shape {tuple(t.shape)}")
    if like is not None and (t.shape != like.shape or t.device != like.device):
        raise ValueError(f"triton {name}: tensors of shapes {tuple(like.shape)} and {tuple(t.shape)} "
                         f"(devices {like.device}, {t.device}) do not match")


def _vec(v: Tensor | None, c: int, cd: torch.dtype, device) -> Tensor | None:
    """A per-channel vector as a (C,) contiguous tensor in cd on ``device``."""
    if v is None:
        return None
    if v.numel() != c:
        raise ValueError(f"triton norm kernels: per-channel vector of {v.numel()} values for {c} channels")
    return v.reshape(c).to(device=device, dtype=cd).contiguous()


def _consts(p: tiles.Plan, cd: torch.dtype, out: torch.dtype | None = None) -> dict:
    """The constexprs every kernel takes: the tile (BA, BC, BB), CD, W (working type), RND (bfloat16 rounding),
    ACC (accumulation), and for kernels with an output OUTV (the type a result passes through on its way to
    the output: no direct float16 <-> bfloat16 casts) and OUT_BF16; plus num_warps."""
    tl = runtime.triton_module().language
    rnd = cd == torch.bfloat16
    wide = cd == torch.float64
    k = dict(BA=p.ba, BC=p.bc, BB=p.bb, num_warps=p.num_warps, CD=runtime.tl_dtype(cd),
             W=tl.float32 if rnd else runtime.tl_dtype(cd), RND=rnd)
    if out is None:
        k["ACC"] = tl.float64 if wide else tl.float32
    else:
        k.update(OUTV=tl.float64 if wide else tl.float32, OUT_BF16=out == torch.bfloat16)
    return k


def _reduce(x3: Tensor, dy3: Tensor | None, mu: Tensor | None, cd: torch.dtype, slots: list[str]) -> dict:
    """Launch ``stats_kernel`` for the statistics named in ``slots`` and reduce each one's partials with torch:
    {name: (C,) tensor of its own (the max in cd, sums in acc(cd))}."""
    runtime.check_launch(x3)
    a, c, b = x3.shape
    p = tiles.plan(x3, "reduce")
    part = {k: torch.empty(p.partials, c, dtype=runtime.acc_dtype(cd), device=x3.device) for k in slots}
    y3 = dy3 if dy3 is not None else x3  # unused pointers: any tensor
    dummy = next(iter(part.values()))
    runtime.launch("stats_kernel", p.programs, x3, y3, mu if mu is not None else x3,
                   *(part.get(k, dummy) for k in _SLOTS), a, c, b, *x3.stride(), *y3.stride(), p.n_c, p.n_b,
                   p.iters, **{f"S_{k.upper()}": k in slots for k in _SLOTS},
                   NEED_D=any(k in slots for k in ("abs", "sign", "sq", "max", "dyd")), NEED_DY=dy3 is not None,
                   **_consts(p, cd))
    out = {}
    for k, t in part.items():
        if k == "max":
            out[k] = (t[0] if p.partials == 1 else t.amax(0)).to(cd)
        else:
            out[k] = t[0] if p.partials == 1 else t.sum(0)
    return out


def channel_sums(x3: Tensor, cd: torch.dtype) -> Tensor:
    """(C,) Σ x per channel, in acc(cd)."""
    _check3("channel_sums", x3)
    return _reduce(x3, None, None, cd, ["x"])["x"]


def dev_stats(x3: Tensor, mu: Tensor, cd: torch.dtype, *, want_abs: bool, want_sign: bool, want_sq: bool,
              want_max: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Per channel (Σ|d|, Σ sign(d), Σ d·d, max|d|) with d = x.to(cd) − mu; sums in acc(cd), max in cd; None where
    not wanted."""
    _check3("dev_stats", x3)
    names = [k for k, w in (("abs", want_abs), ("sign", want_sign), ("sq", want_sq), ("max", want_max)) if w]
    if not names:
        return None, None, None, None
    r = _reduce(x3, None, _vec(mu, x3.shape[1], cd, x3.device), cd, names)
    return r.get("abs"), r.get("sign"), r.get("sq"), r.get("max")


def grad_sums(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, cd: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(Σ dy, Σ dy·d) per channel in acc(cd), d = x − mu; dy.to(cd) (Σ dy·d is None when x3 is None: mean-only)."""
    if x3 is None:
        _check3("grad_sums", dy3)
        return _reduce(dy3, None, None, cd, ["x"])["x"], None
    _check3("grad_sums", x3)
    _check3("grad_sums", dy3, x3)
    r = _reduce(x3, dy3, _vec(mu, x3.shape[1], cd, x3.device), cd, ["dy", "dyd"])
    return r["dy"], r["dyd"]


def topk_dev(x3: Tensor, mu: Tensor, k: int, cd: torch.dtype) -> tuple[Tensor, Tensor]:
    """((C, k) signed d in cd, (C, k) int64 index i = a·B + b) of the k largest |d| per channel, |d| descending
    (ties in any order): k candidates per tile from the kernel, merged with torch.topk."""
    _check3("topk_dev", x3)
    runtime.check_launch(x3)
    a, c, b = x3.shape
    n = a * b
    if not 1 <= k <= n:
        raise ValueError(f"triton topk_dev: k must be in [1, n={n}], got {k}")
    p = tiles.plan(x3, "topk")
    key = torch.empty(c, p.partials * k, dtype=runtime.acc_dtype(cd), device=x3.device)
    dev = torch.empty(c, p.partials * k, dtype=cd, device=x3.device)
    idx = torch.empty(c, p.partials * k, dtype=torch.int64, device=x3.device)
    runtime.launch("topk_kernel", p.programs, x3, _vec(mu, c, cd, x3.device), key, dev, idx, a, c, b, *x3.stride(),
                   p.n_a, p.n_c, p.n_b, K=k, KP=tiles.pow2(k), **_consts(p, cd))
    if p.partials == 1:
        return dev, idx
    sel = key.topk(k, dim=1).indices  # NaN keys first, as torch.topk ranks them
    return dev.gather(1, sel), idx.gather(1, sel)


def normalize(x3: Tensor, mu: Tensor, scale: Tensor, shift: Tensor | None, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = (x − mu)·scale + shift (shift may be None = 0), computed in cd, stored in out3's dtype."""
    _check3("normalize", x3)
    _check3("normalize", out3, x3)
    runtime.check_launch(x3)
    a, c, b = x3.shape
    p = tiles.plan(x3, "map")
    mu, scale, shift = (_vec(v, c, cd, x3.device) for v in (mu, scale, shift))
    runtime.launch("normalize_kernel", p.programs, x3, mu, scale, shift if shift is not None else scale, out3,
                   a, c, b, *x3.stride(), *out3.stride(), p.n_c, p.n_b, p.iters, HAS_SHIFT=shift is not None,
                   **_consts(p, cd, out3.dtype))


def input_grad(x3: Tensor | None, dy3: Tensor, mu: Tensor | None, a: Tensor, kd: Tensor | None, ks: Tensor | None,
               c0: Tensor | None, out3: Tensor, cd: torch.dtype) -> None:
    """out3 = a·dy + kd·d + ks·sign(d) + c0 per channel (kd / ks may be None = 0; x3 and mu may be None when both
    are None, e.g. mean-only BN: dx = dy − mean(dy)), computed in cd, stored in out3's dtype."""
    _check3("input_grad", dy3)
    _check3("input_grad", out3, dy3)
    need_x = kd is not None or ks is not None
    if need_x and (x3 is None or mu is None):
        raise ValueError("triton input_grad: kd or ks given without x3 and mu")
    if need_x:
        _check3("input_grad", x3, dy3)
    runtime.check_launch(dy3)
    na, c, b = dy3.shape
    xs = x3 if need_x else dy3
    p = tiles.plan(dy3, "map")
    vecs = [_vec(v, c, cd, dy3.device) for v in (mu if need_x else None, a, kd, ks, c0)]
    vecs = [v if v is not None else vecs[1] for v in vecs]  # unused pointers: any tensor
    runtime.launch("input_grad_kernel", p.programs, xs, dy3, *vecs, out3, na, c, b, *xs.stride(), *dy3.stride(),
                   *out3.stride(), p.n_c, p.n_b, p.iters, HAS_KD=kd is not None, HAS_KS=ks is not None,
                   HAS_C0=c0 is not None, NEED_X=need_x, **_consts(p, cd, out3.dtype))


def scatter_add(out3: Tensor, idx: Tensor, w: Tensor) -> None:
    """out3[i // B, c, i % B] += w[c, j] for the (C, k) indices i = idx[c, j] (distinct within a channel where w is
    nonzero, as topk_dev's are), computed in out3's dtype (w is converted to it)."""
    _check3("scatter_add", out3)
    runtime.check_launch(out3)
    _, c, b = out3.shape
    if idx.shape[0] != c or w.shape != idx.shape:
        raise ValueError(f"triton scatter_add: idx {tuple(idx.shape)} and w {tuple(w.shape)} must be (C={c}, k)")
    k = idx.shape[1]
    idx = idx.to(device=out3.device, dtype=torch.int64).contiguous()
    w = w.to(device=out3.device, dtype=out3.dtype).contiguous()
    block = min(1024, tiles.pow2(c * k))
    tl_cd = runtime.tl_dtype(out3.dtype)
    runtime.launch("scatter_add_kernel", -(-c * k // block), out3, idx, w, c, b, *out3.stride(), c * k, K=k,
                   BLOCK=block, CD=tl_cd, RND=out3.dtype == torch.bfloat16, num_warps=4)
