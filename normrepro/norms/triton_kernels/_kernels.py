"""The Triton kernels of the norm primitives. Loaded by ``runtime.kernels()`` once per mode, as the module
``..._kernels_jit`` (compiled) or ``..._kernels_interp`` (Triton's interpreter); ``jit`` (kernels) and ``device_fn``
(functions they call) decorate in that mode.

Common to all: a 1-D grid; program ``pid`` covers c-block ``pc``, b-block ``pb`` and a-chunk ``pa`` with
pid = (pa * n_c + pc) * n_b + pb (consecutive programs read neighbouring memory), a tile (BA, BC, BB) of the
(A, C, B) view at any strides, and ``iters`` tiles along A. Values are converted to the compute dtype CD and the
elementwise math runs in W = CD, except for bfloat16: W = float32 holding bfloat16 values, rounded to the nearest
bfloat16 after every operation (RND), which is what a bfloat16 operation computes. Sums accumulate in ACC (float32;
float64 for float64). No triton.language library function (tl.sum, tl.max, tl.zeros, ...) is called, only builtins
and ``tl.reduce`` with the library's combine functions (see runtime.py for why).
"""
import triton.language as tl

from normrepro.norms.triton_kernels.runtime import device_fn_decorator, jit_decorator

INTERPRET = __name__.endswith("_interp")
jit = jit_decorator(INTERPRET)
device_fn = device_fn_decorator(INTERPRET)

_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min


def _bf16_round_bits(v):
    """float32 -> the nearest bfloat16 (ties to even), as float32, by integer arithmetic (the interpreter's own
    float32 -> bfloat16 cast truncates)."""
    u = v.to(tl.int32, bitcast=True)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return tl.where(v != v, v, r.to(tl.float32, bitcast=True))


def _bf16_round_cvt(v):
    """float32 -> the nearest bfloat16 (ties to even), as float32, by the hardware conversion."""
    return v.to(tl.bfloat16).to(tl.float32)


bf16_round = device_fn(_bf16_round_bits if INTERPRET else _bf16_round_cvt)


@device_fn
def to_w(v, CD: tl.constexpr, RND: tl.constexpr):
    """A loaded value converted to the compute dtype, held in the working type."""
    if RND:
        r = bf16_round(v.to(tl.float32))
    else:
        r = v.to(CD)
    return r


@device_fn
def rnd(v, RND: tl.constexpr):
    """The result of an operation in the working type, rounded to bfloat16 when computing in bfloat16."""
    if RND:
        v = bf16_round(v)
    return v


@device_fn
def to_out(v, OUTV: tl.constexpr, OUT_BF16: tl.constexpr):
    """A result on its way to the output dtype (via float32/float64: no direct float16 <-> bfloat16 casts)."""
    if OUT_BF16:
        r = bf16_round(v.to(tl.float32)).to(tl.bfloat16)
    else:
        r = v.to(OUTV)
    return r


@device_fn
def tile_coords(n_c, n_b, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr):
    """(pa, pc, pb) of this program and its tile's index vectors ra (BA,1,1), c (1,BC,1), b (1,1,BB)."""
    pid = tl.program_id(0)
    pb = pid % n_b
    pc = (pid // n_b) % n_c
    pa = pid // (n_b * n_c)
    ra = tl.arange(0, BA)[:, None, None]
    c = pc * BC + tl.arange(0, BC)[None, :, None]
    b = pb * BB + tl.arange(0, BB)[None, None, :]
    return pa, pc, pb, ra, c, b


@device_fn
def channel_total(t):
    """Σ over a tile's A and B axes: (BA, BC, BB) -> (BC,)."""
    return tl.reduce(tl.reduce(t, 2, _SUM), 0, _SUM)


@jit
def stats_kernel(x_ptr, y_ptr, mu_ptr, px_ptr, pabs_ptr, psign_ptr, psq_ptr, pmax_ptr, pdy_ptr, pdyd_ptr,
                 A, C, B, sxa, sxc, sxb, sya, syc, syb, n_c, n_b, iters,
                 S_X: tl.constexpr, S_ABS: tl.constexpr, S_SIGN: tl.constexpr, S_SQ: tl.constexpr,
                 S_MAX: tl.constexpr, S_DY: tl.constexpr, S_DYD: tl.constexpr, NEED_D: tl.constexpr,
                 NEED_DY: tl.constexpr, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr, CD: tl.constexpr,
                 W: tl.constexpr, ACC: tl.constexpr, RND: tl.constexpr):
    """Per program and channel, the statistics asked for (S_* true), each into its own (P, C) buffer at [p, c],
    p = pa * n_b + pb: Σx, Σ|d|, Σsign(d), Σd², max|d| (NaN if any |d| is NaN), Σdy, Σdy·d, with d = x - mu
    (x: x_ptr, dy: y_ptr)."""
    pa, pc, pb, ra, c, b = tile_coords(n_c, n_b, BA, BC, BB)
    cb_mask = (c < C) & (b < B)
    cx = c.to(tl.int64) * sxc + b.to(tl.int64) * sxb
    cy = c.to(tl.int64) * syc + b.to(tl.int64) * syb
    if NEED_D:
        mu = to_w(tl.load(mu_ptr + c, mask=c < C, other=0.0), CD, RND)
    acc_x = tl.full((BA, BC, BB), 0.0, ACC)
    acc_abs = tl.full((BA, BC, BB), 0.0, ACC)
    acc_sign = tl.full((BA, BC, BB), 0.0, ACC)
    acc_sq = tl.full((BA, BC, BB), 0.0, ACC)
    acc_dy = tl.full((BA, BC, BB), 0.0, ACC)
    acc_dyd = tl.full((BA, BC, BB), 0.0, ACC)
    mx = tl.full((BA, BC, BB), 0.0, W)
    for it in range(0, iters):
        a = (pa * iters + it) * BA + ra
        m = (a < A) & cb_mask
        a64 = a.to(tl.int64)
        x = to_w(tl.load(x_ptr + (a64 * sxa + cx), mask=m, other=0.0), CD, RND)
        if S_X:
            acc_x += x.to(ACC)
        if NEED_D:
            d = rnd(tl.where(m, x - mu, 0.0), RND)
            if S_ABS:
                acc_abs += tl.abs(d).to(ACC)
            if S_SIGN:
                acc_sign += (d > 0).to(ACC) - (d < 0).to(ACC)
            if S_SQ:
                acc_sq += rnd(d * d, RND).to(ACC)
            if S_MAX:
                mx = tl.maximum(mx, tl.abs(d), propagate_nan=tl.PropagateNan.ALL)
        if NEED_DY:
            g = to_w(tl.load(y_ptr + (a64 * sya + cy), mask=m, other=0.0), CD, RND)
            if S_DY:
                acc_dy += g.to(ACC)
            if S_DYD:
                acc_dyd += rnd(g * d, RND).to(ACC)
    cv = pc * BC + tl.arange(0, BC)
    cm = cv < C
    out = (pa * n_b + pb) * C + cv
    if S_X:
        tl.store(px_ptr + out, channel_total(acc_x), mask=cm)
    if S_ABS:
        tl.store(pabs_ptr + out, channel_total(acc_abs), mask=cm)
    if S_SIGN:
        tl.store(psign_ptr + out, channel_total(acc_sign), mask=cm)
    if S_SQ:
        tl.store(psq_ptr + out, channel_total(acc_sq), mask=cm)
    if S_DY:
        tl.store(pdy_ptr + out, channel_total(acc_dy), mask=cm)
    if S_DYD:
        tl.store(pdyd_ptr + out, channel_total(acc_dyd), mask=cm)
    if S_MAX:
        top = tl.reduce(tl.reduce(mx, 2, _MAX), 0, _MAX).to(ACC)
        nans = channel_total((mx != mx).to(tl.int32))
        tl.store(pmax_ptr + out, tl.where(nans > 0, float("nan"), top), mask=cm)


@jit
def topk_kernel(x_ptr, mu_ptr, key_ptr, dev_ptr, idx_ptr, A, C, B, sxa, sxc, sxb, n_a, n_c, n_b,
                K: tl.constexpr, KP: tl.constexpr, BA: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr,
                CD: tl.constexpr, W: tl.constexpr, ACC: tl.constexpr, RND: tl.constexpr):
    """Per program (one tile) and channel, the K largest |d| of the tile, by K rounds of (max, then the first
    position holding it): key[c, p, j] = |d| (-1: no value left), dev[c, p, j] = d, idx[c, p, j] = a*B + b
    with p = pa * n_b + pb (KP: K rounded up to a power of two)."""
    pa, pc, pb, ra, c, b = tile_coords(n_c, n_b, BA, BC, BB)
    a = pa * BA + ra
    m = (a < A) & (c < C) & (b < B)
    x = to_w(tl.load(x_ptr + (a.to(tl.int64) * sxa + c.to(tl.int64) * sxc + b.to(tl.int64) * sxb), mask=m,
                     other=0.0), CD, RND)
    mu = to_w(tl.load(mu_ptr + c, mask=c < C, other=0.0), CD, RND)
    d = rnd(tl.where(m, x - mu, 0.0), RND)
    ad = tl.abs(d)
    isnan = ad != ad
    # rank: |d| (NaN ranks as inf), -1 outside the tensor, -2 once taken; code: position * 4 + NaN * 2 + negative
    rank = tl.where(m, tl.where(isnan, float("inf"), ad.to(ACC)), -1.0)
    code = (ra * BB + tl.arange(0, BB)[None, None, :]) * 4 + isnan.to(tl.int32) * 2 + (d < 0).to(tl.int32)
    jj = tl.arange(0, KP)[None, :]
    tops = tl.full((BC, KP), -1.0, ACC)
    codes = tl.full((BC, KP), 0, tl.int32)
    for j in range(0, K):
        top = tl.reduce(tl.reduce(rank, 2, _MAX), 0, _MAX)
        sel = tl.reduce(tl.reduce(tl.where(rank == top[None, :, None], code, BA * BB * 4), 2, _MIN), 0, _MIN)
        rank = tl.where(code == sel[None, :, None], -2.0, rank)
        tops = tl.where(jj == j, top[:, None], tops)
        codes = tl.where(jj == j, sel[:, None], codes)
    valid = tops >= 0
    mag = tl.where((codes & 2) != 0, float("nan"), tops)
    pos = codes // 4
    i = (pa * BA + pos // BB).to(tl.int64) * B + pb * BB + pos % BB
    cv = pc * BC + tl.arange(0, BC)[:, None]
    out = (cv * (n_a * n_b) + pa * n_b + pb) * K + jj  # [c, p, j]: per channel, its candidates side by side
    om = (cv < C) & (jj < K)
    tl.store(key_ptr + out, tl.where(valid, mag, -1.0), mask=om)
    tl.store(dev_ptr + out, tl.where((codes & 1) != 0, -mag, mag).to(dev_ptr.dtype.element_ty), mask=om)
    tl.store(idx_ptr + out, tl.where(valid, i, 0), mask=om)


@jit
def normalize_kernel(x_ptr, mu_ptr, scale_ptr, shift_ptr, out_ptr, A, C, B, sxa, sxc, sxb, soa, soc, sob,
                     n_c, n_b, iters, HAS_SHIFT: tl.constexpr, BA: tl.constexpr, BC: tl.constexpr,
                     BB: tl.constexpr, CD: tl.constexpr, W: tl.constexpr, RND: tl.constexpr, OUTV: tl.constexpr,
                     OUT_BF16: tl.constexpr):
    """out = (x - mu) * scale (+ shift), in CD."""
    pa, pc, pb, ra, c, b = tile_coords(n_c, n_b, BA, BC, BB)
    cmask = c < C
    cb_mask = cmask & (b < B)
    cx = c.to(tl.int64) * sxc + b.to(tl.int64) * sxb
    co = c.to(tl.int64) * soc + b.to(tl.int64) * sob
    mu = to_w(tl.load(mu_ptr + c, mask=cmask, other=0.0), CD, RND)
    scale = to_w(tl.load(scale_ptr + c, mask=cmask, other=0.0), CD, RND)
    if HAS_SHIFT:
        shift = to_w(tl.load(shift_ptr + c, mask=cmask, other=0.0), CD, RND)
    for it in range(0, iters):
        a = (pa * iters + it) * BA + ra
        m = (a < A) & cb_mask
        a64 = a.to(tl.int64)
        x = to_w(tl.load(x_ptr + (a64 * sxa + cx), mask=m, other=0.0), CD, RND)
        y = rnd(rnd(x - mu, RND) * scale, RND)
        if HAS_SHIFT:
            y = rnd(y + shift, RND)
        tl.store(out_ptr + (a64 * soa + co), to_out(y, OUTV, OUT_BF16).to(out_ptr.dtype.element_ty), mask=m)


@jit
def input_grad_kernel(x_ptr, dy_ptr, mu_ptr, a_ptr, kd_ptr, ks_ptr, c0_ptr, out_ptr, A, C, B, sxa, sxc, sxb,
                      sya, syc, syb, soa, soc, sob, n_c, n_b, iters, HAS_KD: tl.constexpr, HAS_KS: tl.constexpr,
                      HAS_C0: tl.constexpr, NEED_X: tl.constexpr, BA: tl.constexpr, BC: tl.constexpr,
                      BB: tl.constexpr, CD: tl.constexpr, W: tl.constexpr, RND: tl.constexpr, OUTV: tl.constexpr,
                      OUT_BF16: tl.constexpr):
    """out = a·dy (+ kd·d) (+ ks·sign(d)) (+ c0), left to right in CD, d = x - mu."""
    pa, pc, pb, ra, c, b = tile_coords(n_c, n_b, BA, BC, BB)
    cmask = c < C
    cb_mask = cmask & (b < B)
    cx = c.to(tl.int64) * sxc + b.to(tl.int64) * sxb
    cy = c.to(tl.int64) * syc + b.to(tl.int64) * syb
    co = c.to(tl.int64) * soc + b.to(tl.int64) * sob
    ca = to_w(tl.load(a_ptr + c, mask=cmask, other=0.0), CD, RND)
    if NEED_X:
        mu = to_w(tl.load(mu_ptr + c, mask=cmask, other=0.0), CD, RND)
    if HAS_KD:
        kd = to_w(tl.load(kd_ptr + c, mask=cmask, other=0.0), CD, RND)
    if HAS_KS:
        ks = to_w(tl.load(ks_ptr + c, mask=cmask, other=0.0), CD, RND)
    if HAS_C0:
        c0 = to_w(tl.load(c0_ptr + c, mask=cmask, other=0.0), CD, RND)
    for it in range(0, iters):
        a = (pa * iters + it) * BA + ra
        m = (a < A) & cb_mask
        a64 = a.to(tl.int64)
        g = to_w(tl.load(dy_ptr + (a64 * sya + cy), mask=m, other=0.0), CD, RND)
        o = rnd(ca * g, RND)
        if NEED_X:
            x = to_w(tl.load(x_ptr + (a64 * sxa + cx), mask=m, other=0.0), CD, RND)
            d = rnd(x - mu, RND)
            if HAS_KD:
                o = rnd(o + rnd(kd * d, RND), RND)
            if HAS_KS:
                o = rnd(o + rnd(ks * ((d > 0).to(W) - (d < 0).to(W)), RND), RND)
        if HAS_C0:
            o = rnd(o + c0, RND)
        tl.store(out_ptr + (a64 * soa + co), to_out(o, OUTV, OUT_BF16).to(out_ptr.dtype.element_ty), mask=m)


@jit
def scatter_add_kernel(out_ptr, idx_ptr, w_ptr, C, B, soa, soc, sob, CK, K: tl.constexpr, BLOCK: tl.constexpr,
                       CD: tl.constexpr, RND: tl.constexpr):
    """out[i // B, c, i % B] += w[c, j] for i = idx[c, j] over the (C, K) entries with w != 0 (in CD). The nonzero
    entries of a channel have distinct indices, so plain load-add-store is exact and deterministic; zero weights
    (entries another process selected, all at index 0) are skipped."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    w = to_w(tl.load(w_ptr + e, mask=e < CK, other=0.0), CD, RND)
    m = (e < CK) & (w != 0)
    i = tl.load(idx_ptr + e, mask=m, other=0)
    c = e // K
    off = (i // B) * soa + c.to(tl.int64) * soc + (i % B) * sob
    v = to_w(tl.load(out_ptr + off, mask=m, other=0.0), CD, RND)
    tl.store(out_ptr + off, rnd(v + w, RND).to(out_ptr.dtype.element_ty), mask=m)
