"""The Triton norm primitives on the CPU through Triton's interpreter, against the torch formulas.

TRITON_INTERPRET is set per test (monkeypatch): normrepro.norms.triton_kernels reads it at each launch (see its
runtime.py), whether or not triton was imported earlier in the process.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

from normrepro.norms import triton_kernels as tk  # noqa: E402
from normrepro.norms.constants import C_L1, c_linf  # noqa: E402
from normrepro.norms.functional import view3  # noqa: E402
from normrepro.norms.triton_kernels import tiles  # noqa: E402

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_x(layout: str, dtype=F32, seed=0, scale=1.0) -> torch.Tensor:
    """A (A, C, B) view of a small tensor in ``layout``; values (2 + N(0, scale)) rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    if layout == "nchw":
        x = torch.randn(4, 3, 5, 6, generator=g)
    elif layout == "odd":  # B = 21, not a multiple of any tile
        x = torch.randn(3, 5, 7, 3, generator=g)
    elif layout == "cl":
        x = torch.randn(4, 3, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
    elif layout == "cl_wide":  # more channels than the default channels_last top-k tile (8)
        x = torch.randn(2, 11, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    elif layout == "2d":
        x = torch.randn(16, 8, generator=g)
    elif layout == "strided":  # a non-dense view: strides (63, 18, 2)
        return (2 + scale * torch.randn(5, 7, 9, generator=g)).to(dtype)[:, 1::2, ::2]
    else:
        raise ValueError(layout)
    return view3((2 + scale * x).to(dtype))


def vec(t, c):
    return t.view(1, c, 1)


# cases: (layout, x dtype, compute dtype, forced small tiles)
CASES = [("nchw", F32, F32, False), ("nchw", F32, F32, True), ("cl", F32, F32, True), ("2d", F16, F16, False),
         ("cl", F16, F16, False), ("odd", BF16, BF16, False), ("strided", F32, F32, True), ("nchw", F16, F32, False),
         ("cl_wide", F64, F64, False), ("2d", F32, BF16, False), ("odd", F16, F16, True)]
IDS = [f"{lay}-{str(xd)[6:]}-cd_{str(cd)[6:]}{'-small' if small else ''}" for lay, xd, cd, small in CASES]


def maybe_small(small: bool, x3):
    """Small tiles and 3 programs: several programs, loop iterations, partials and edge masks (tiles of 2 x 2 x 4
    where B > 1, else 8 x 2 x 1: the interpreter's time grows with the number of tiles)."""
    if not small:
        return _nothing()
    return tiles.forced(2, 2, 4, programs=3) if x3.shape[2] > 1 else tiles.forced(8, 2, 1, programs=3)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def acc(cd):
    return F64 if cd == F64 else F32


def assert_sums(got, want, terms):
    """Sums accumulated in another order: equal within a few float32 roundings of the sum of |terms|."""
    assert got.dtype == want.dtype
    tol = 4e-6 * terms.abs().to(F64).sum((0, 2)) + 1e-30
    err = (got.to(F64) - want.to(F64)).abs()
    assert torch.all((err <= tol) | (got == want)), (got, want)


def mean_of(x3, cd):
    a, c, b = x3.shape
    return (x3.to(cd).to(F64).sum((0, 2)) / (a * b)).to(cd)


@pytest.mark.parametrize("layout,xd,cd,small", CASES, ids=IDS)
def test_reductions_match_torch(layout, xd, cd, small):
    x3 = make_x(layout, xd)
    mu = mean_of(x3, cd)
    dy3 = make_x(layout, xd, seed=1) - 2
    xc, dyc = x3.to(cd), dy3.to(cd)
    d = xc - vec(mu, x3.shape[1])
    with maybe_small(small, x3):
        sums = tk.channel_sums(x3, cd)
        sa, ss, sq, mx = tk.dev_stats(x3, mu, cd, want_abs=True, want_sign=True, want_sq=True, want_max=True)
        g1, g2 = tk.grad_sums(x3, dy3, mu, cd)
    assert_sums(sums, xc.to(acc(cd)).sum((0, 2)), xc)
    assert_sums(sa, d.abs().to(acc(cd)).sum((0, 2)), d)
    assert torch.equal(ss, d.sign().to(acc(cd)).sum((0, 2)))
    assert_sums(sq, (d * d).to(acc(cd)).sum((0, 2)), d * d)
    assert mx.dtype == cd and torch.equal(mx, d.abs().amax((0, 2)))
    assert_sums(g1, dyc.to(acc(cd)).sum((0, 2)), dyc)
    with maybe_small(small, x3):
        g1m, none = tk.grad_sums(None, dy3, None, cd)  # mean-only BN: Σ dy alone
    assert none is None and torch.equal(g1m, g1)
    assert_sums(g2, (dyc * d).to(acc(cd)).sum((0, 2)), dyc * d)


def test_dev_stats_subsets_and_none():
    x3 = make_x("nchw")
    mu = mean_of(x3, F32)
    sa, ss, sq, mx = tk.dev_stats(x3, mu, F32, want_abs=False, want_sign=True, want_sq=False, want_max=True)
    assert sa is None and sq is None and ss is not None and mx is not None
    full = tk.dev_stats(x3, mu, F32, want_abs=True, want_sign=True, want_sq=True, want_max=True)
    assert torch.equal(ss, full[1]) and torch.equal(mx, full[3])
    assert tk.dev_stats(x3, mu, F32, want_abs=False, want_sign=False, want_sq=False, want_max=False) == (None,) * 4


@pytest.mark.parametrize("small", [False, True])
def test_results_are_tensors_of_their_own(small):
    """Each result has its own storage at offset 0 (a registered op's outputs must match its fake tensors)."""
    x3 = make_x("cl")
    mu = mean_of(x3, F32)
    with maybe_small(small, x3):
        res = [tk.channel_sums(x3, F32), *tk.dev_stats(x3, mu, F32, want_abs=True, want_sign=True, want_sq=True,
                                                          want_max=True), *tk.grad_sums(x3, x3, mu, F32),
               *tk.topk_dev(x3, mu, 3, F32)]
    assert all(t.storage_offset() == 0 and t.is_contiguous() for t in res)
    assert len({t.untyped_storage().data_ptr() for t in res}) == len(res)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, inside the interpreter
def test_fp16_squares_overflow_like_torch():
    """|d| > 255.9 in float16: d*d is inf, as in torch's naive (d*d).mean(); Σ|d| stays finite."""
    x = torch.full((6, 2, 4), 0.0)
    x[:, 0] = torch.tensor([-300.0, 300.0, 1.0, -1.0])  # channel 0 overflows, channel 1 does not
    x[:, 1] = torch.tensor([-200.0, 200.0, 1.0, -1.0])
    x3 = x.to(F16)
    mu = torch.zeros(2, dtype=F16)
    sa, _, sq, _ = tk.dev_stats(x3, mu, F16, want_abs=True, want_sign=False, want_sq=True, want_max=False)
    d = x3 - vec(mu, 2)
    ref = (d * d).to(F32).sum((0, 2))
    assert math.isinf(ref[0]) and math.isinf(sq[0]) and sq[0] > 0
    assert torch.isfinite(sq[1]) and torch.equal(sq[1], ref[1])
    assert torch.isfinite(sa).all()
    with torch.no_grad():  # the same statistic in float32 is finite
        sq32 = tk.dev_stats(x3, mu, F32, want_abs=False, want_sign=False, want_sq=True, want_max=False)[2]
    assert torch.isfinite(sq32).all()


def test_sign_of_zero_deviations_and_ties():
    """d == 0 has sign 0; a constant channel has Σ|d| = Σsign = max|d| = 0."""
    x = torch.tensor([[1.0, 2.0, 2.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0]]).T.reshape(5, 2, 1).contiguous()
    mu = torch.tensor([2.0, 5.0])
    sa, ss, _, mx = tk.dev_stats(x, mu, F32, want_abs=True, want_sign=True, want_sq=False, want_max=True)
    assert ss.tolist() == [0.0, 0.0] and sa.tolist() == [2.0, 0.0] and mx.tolist() == [1.0, 0.0]
    dev, idx = tk.topk_dev(x, mu, 3, F32)
    assert dev[0, :2].abs().tolist() == [1.0, 1.0] and sorted(idx[0, :2].tolist()) == [0, 3]
    assert dev[0, 2] == 0 and idx[0, 2].item() in (1, 2, 4)
    assert torch.all(dev[1] == 0) and len(set(idx[1].tolist())) == 3


def test_nan_propagates_like_torch():
    x3 = make_x("nchw").clone()
    x3[1, 2, 3] = float("nan")
    mu = mean_of(make_x("nchw"), F32)  # finite mean: the NaN enters through d only
    sums = tk.channel_sums(x3, F32)
    sa, ss, sq, mx = tk.dev_stats(x3, mu, F32, want_abs=True, want_sign=True, want_sq=True, want_max=True)
    d = x3 - vec(mu, 3)
    for got, want in ((sums, x3.sum((0, 2))), (sa, d.abs().sum((0, 2))), (sq, (d * d).sum((0, 2))),
                      (mx, d.abs().amax((0, 2)))):
        assert torch.equal(got.isnan(), want.isnan()) and got.isnan()[2] and not got.isnan()[:2].any()
    assert torch.equal(ss, d.sign().sum((0, 2)))  # sign(NaN) = 0 in torch
    dev, idx = tk.topk_dev(x3, mu, 2, F32)
    assert dev[2, 0].isnan() and idx[2, 0] == 1 * 30 + 3 and not dev[:2].isnan().any()


TOPK_CASES = [c + (k,) for c in CASES for k in (1, 10) if c[1:3] != (F16, F32) and not (k == 1 and c[3])]
TOPK_CASES += [("cl", F32, F32, True, 16), ("odd", BF16, BF16, False, 16)]


@pytest.mark.parametrize("layout,xd,cd,small,k", TOPK_CASES)
def test_topk_dev_matches_torch(layout, xd, cd, small, k):
    x3 = make_x(layout, xd)
    a, c, b = x3.shape
    n = a * b
    k = min(k, n)
    mu = mean_of(x3, cd)
    with maybe_small(small, x3):
        dev, idx = tk.topk_dev(x3, mu, k, cd)
    d = (x3.to(cd) - vec(mu, c)).transpose(0, 1).reshape(c, n)  # index a*B + b
    assert dev.shape == (c, k) and dev.dtype == cd and idx.dtype == torch.int64
    assert torch.equal(dev.abs(), d.abs().topk(k, dim=1).values)  # |d| descending, ties in any order
    assert torch.equal(d.gather(1, idx), dev)  # the index points at that deviation
    assert all(len(set(row)) == k for row in idx.tolist())


def test_topk_k_equals_n_and_n_below_tile():
    x3 = make_x("2d")  # n = 16
    mu = mean_of(x3, F32)
    dev, idx = tk.topk_dev(x3, mu, 16, F32)
    assert torch.equal(idx.sort(1).values, torch.arange(16).expand(8, 16))
    with pytest.raises(ValueError, match="k must be"):
        tk.topk_dev(x3, mu, 17, F32)


@pytest.mark.parametrize("layout,xd,cd,small", CASES, ids=IDS)
def test_elementwise_match_torch(layout, xd, cd, small):
    x3 = make_x(layout, xd)
    a, c, b = x3.shape
    g = torch.Generator().manual_seed(5)
    mu, scale, shift, ca, kd, ks, c0 = (torch.randn(c, generator=g).to(cd) for _ in range(7))
    dy3 = make_x(layout, xd, seed=1)
    xc, dyc = x3.to(cd), dy3.to(cd)
    d = xc - vec(mu, c)
    out_dtypes = [xd] if xd == cd else [xd, cd]
    for od in out_dtypes:
        y = torch.empty(x3.shape, dtype=od)
        with maybe_small(small, x3):
            tk.normalize(x3, mu, scale, shift, y, cd)
        assert torch.equal(y, (d * vec(scale, c) + vec(shift, c)).to(od))
        with maybe_small(small, x3):
            tk.normalize(x3, mu, scale, None, y, cd)
        assert torch.equal(y, (d * vec(scale, c)).to(od))
        dx = torch.empty(x3.shape, dtype=od)
        with maybe_small(small, x3):
            tk.input_grad(x3, dy3, mu, ca, kd, ks, c0, dx, cd)
        want = vec(ca, c) * dyc + vec(kd, c) * d + vec(ks, c) * d.sign() + vec(c0, c)
        assert torch.equal(dx, want.to(od))
        with maybe_small(small, x3):
            tk.input_grad(x3, dy3, mu, ca, None, ks, c0, dx, cd)  # L1 (L2: kd only, in the composed layers)
        assert torch.equal(dx, (vec(ca, c) * dyc + vec(ks, c) * d.sign() + vec(c0, c)).to(od))
        with maybe_small(small, x3):
            tk.input_grad(None, dy3, None, ca, None, None, c0, dx, cd)  # mean-only / Top-k dense part
        assert torch.equal(dx, (vec(ca, c) * dyc + vec(c0, c)).to(od))


def test_output_into_a_strided_view():
    """out3 may have its own strides (e.g. a channels_last output of an NCHW-viewed input)."""
    x3 = make_x("nchw")
    mu, scale = mean_of(x3, F32), torch.tensor([1.0, 2.0, 3.0])
    big = torch.zeros(4, 6, 60)
    out3 = big[:, ::2, ::2]
    tk.normalize(x3, mu, scale, None, out3, F32)
    assert torch.equal(out3, (x3 - vec(mu, 3)) * vec(scale, 3))
    assert torch.all(big[:, 1::2] == 0) and torch.all(big[:, :, 1::2] == 0)


def test_expanded_gradient_of_stride_zero():
    """dy of ``y.sum()`` is an expanded tensor (strides 0): read as it is."""
    x3 = make_x("nchw")
    mu = mean_of(x3, F32)
    dy3 = torch.ones(1, 1, 1).expand(x3.shape)
    g1, g2 = tk.grad_sums(x3, dy3, mu, F32)
    assert torch.equal(g1, torch.full((3,), 120.0))
    assert_sums(g2, (x3 - vec(mu, 3)).sum((0, 2)), x3 - vec(mu, 3))


@pytest.mark.parametrize("layout,dtype", [("nchw", F32), ("cl", F16), ("odd", BF16)])
def test_scatter_add_matches_index_put(layout, dtype):
    """The Top-k backward's weights at the selected values; zero weights at duplicate index 0 (the entries another
    process selected, in a synchronized norm) leave the values as they are."""
    x3 = make_x(layout)
    a, c, b = x3.shape
    mu = mean_of(x3, F32)
    _, idx = tk.topk_dev(x3, mu, 4, F32)
    w = torch.randn(c, 4, generator=torch.Generator().manual_seed(2)).to(dtype)
    w[0, 1:] = 0
    idx[0, 1:] = 0  # duplicates, with zero weight
    out = make_x(layout, dtype, seed=4)
    want = out.clone()
    ch = torch.arange(c).unsqueeze(1).expand(c, 4)
    want.index_put_((idx // b, ch, idx % b), w, accumulate=True)
    tk.scatter_add(out, idx, w)
    assert torch.equal(out, want)


def test_deterministic_run_to_run():
    x3 = make_x("cl", seed=3)
    mu = mean_of(x3, F32)
    with tiles.forced(8, 2, 1, programs=5):
        r1 = tk.dev_stats(x3, mu, F32, want_abs=True, want_sign=True, want_sq=True, want_max=True)
        r2 = tk.dev_stats(x3, mu, F32, want_abs=True, want_sign=True, want_sq=True, want_max=True)
    assert all(torch.equal(u, v) for u, v in zip(r1, r2))


# ------------------------------------------------------------------------- composed layers vs autograd
def composed_bn(norm, x, gamma, beta, dy, cd, eps=1e-5, k=3):
    """Forward and analytic backward of ``norm`` batch norm composed from the primitives (primitives.md)."""
    x3, dy3 = view3(x), view3(dy)
    na, c, b = x3.shape
    n = na * b
    mu = (tk.channel_sums(x3, cd) / n).to(cd)
    if norm == "l1":
        sa, ss, _, _ = tk.dev_stats(x3, mu, cd, want_abs=True, want_sign=True, want_sq=False, want_max=False)
        f = (C_L1 * sa / n).to(cd)
        s = f + eps
    elif norm == "l2":
        f = (tk.dev_stats(x3, mu, cd, want_abs=False, want_sign=False, want_sq=True, want_max=False)[2] / n).to(cd)
        s = (f + eps).sqrt()
    elif norm == "topk":
        dev, idx = tk.topk_dev(x3, mu, k, cd)
        f = c_linf(n) * dev.abs().mean(1)
        s = f + eps
    y = torch.empty_like(x)
    if norm == "mean":
        tk.normalize(x3, mu, torch.ones_like(mu), beta, view3(y), cd)
    else:
        tk.normalize(x3, mu, gamma / s, beta, view3(y), cd)
    g1, g2 = tk.grad_sums(x3, dy3, mu, cd)
    g1, g2 = g1.to(cd), g2.to(cd)
    dx = torch.empty_like(x)
    if norm == "mean":
        tk.input_grad(None, dy3, None, torch.ones_like(mu), None, None, -g1 / n, view3(dx), cd)
        return y, dx, None, g1, mu, None
    a = gamma / s
    q = gamma * (g2 / n) / s / s
    if norm == "l1":
        ks = -C_L1 * q
        tk.input_grad(x3, dy3, mu, a, None, ks, -a * g1 / n - ks * ss / n, view3(dx), cd)
    elif norm == "l2":
        tk.input_grad(x3, dy3, mu, a, -q / s, None, -a * g1 / n, view3(dx), cd)
    else:
        sgn = dev.sign()
        tk.input_grad(None, dy3, None, a, None, None, -a * g1 / n + q * (c_linf(n) / k) * sgn.sum(1), view3(dx), cd)
        w = -(q * (c_linf(n) * n / k)).unsqueeze(1) * sgn
        dx3 = view3(dx)
        ch = torch.arange(c).unsqueeze(1).expand(c, k)
        dx3.index_put_((idx // b, ch, idx % b), w.to(dx.dtype), accumulate=True)
    return y, dx, g2 / s, g1, mu, f


def reference_bn(norm, x, gamma, beta, eps=1e-5, k=3):
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mu = x.mean(dims, keepdim=True)
    d = x - mu
    n = x.numel() // x.shape[1]
    if norm == "mean":
        return d + beta.view(shape), mu.flatten(), None
    if norm == "l1":
        f = C_L1 * d.abs().mean(dims, keepdim=True)
        s = f + eps
    elif norm == "l2":
        f = (d * d).mean(dims, keepdim=True)
        s = (f + eps).sqrt()
    else:
        flat = d.transpose(0, 1).reshape(x.shape[1], -1)
        f = (c_linf(n) * flat.abs().topk(k, dim=1).values.mean(1)).view(shape)
        s = f + eps
    return gamma.view(shape) * d / s + beta.view(shape), mu.flatten(), f.flatten()


@pytest.mark.parametrize("norm", ["l1", "l2", "topk", "mean"])
@pytest.mark.parametrize("layout,dtype", [("nchw", F32), ("cl", F32), ("2d", F64)])
def test_composed_layer_matches_autograd(norm, layout, dtype):
    g = torch.Generator().manual_seed(11)
    shape = (16, 4) if layout == "2d" else (3, 4, 5, 3)
    x = (3 * torch.randn(shape, generator=g) + 1).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    gamma = (torch.rand(4, generator=g) + 0.5).to(dtype)
    beta = torch.randn(4, generator=g).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last
                                                               if layout == "cl" else torch.contiguous_format)
    y, dx, dgamma, dbeta, mu, f = composed_bn(norm, x, gamma, beta, dy, dtype)

    xr, gr, br = (t.detach().clone().requires_grad_(True) for t in (x, gamma, beta))
    yr, mur, fr = reference_bn(norm, xr, gr, br)
    yr.backward(dy)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y, yr.detach(), **tol)
    torch.testing.assert_close(mu, mur.detach(), **tol)
    if f is not None:
        torch.testing.assert_close(f, fr.detach(), **tol)
    torch.testing.assert_close(dx, xr.grad, **tol)
    torch.testing.assert_close(dbeta, br.grad, **tol)
    if dgamma is not None:
        torch.testing.assert_close(dgamma, gr.grad, **tol)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "cl")
