"""Normalization layers (issue 3): each norm against a straightforward implementation of its formula,
torch BatchNorm parity for l2, running statistics, scale invariance, the Gaussian L1 estimate,
gradcheck of the analytic backward, precision options, factory and bad input."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.autograd import gradcheck

from normrepro.errors import ConfigError
from normrepro.norms import (
    C_L1,
    NORM_NAMES,
    BatchNorm,
    L2LpBatchNorm,
    backend,
    build_norm,
    c_linf,
    is_norm_layer,
    norm_factory,
)
from normrepro.utils.bench import saved_bytes

LP = ["l1", "linf", "topk"]
BACKENDS = ["native", "torch"]  # the compiled CPU kernels and the torch-ops path (CUDA, fp16, compile)


def reference(name: str, x: torch.Tensor, w, b, eps: float = 1e-5, k: int = 10) -> torch.Tensor:
    """The formulas of docs/paper.md §1.3 written plainly (autograd differentiates them)."""
    dims = (0, *range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    mu = x.mean(dims, keepdim=True)
    d = x - mu
    if name == "l2":
        s = (d.pow(2).mean(dims, keepdim=True) + eps).sqrt()
    elif name == "l1":
        s = math.sqrt(math.pi / 2) * d.abs().mean(dims, keepdim=True) + eps
    elif name == "linf":
        s = c_linf(n) * d.abs().amax(dims, keepdim=True) + eps
    elif name == "topk":
        per_channel = d.abs().transpose(0, 1).reshape(x.shape[1], -1)
        s = (c_linf(n) * per_channel.topk(min(k, n), dim=1).values.mean(1) + eps).view(shape)
    elif name == "mean":
        y = d
        return y if b is None else y + b.view(shape)
    else:
        raise ValueError(name)
    y = d / s
    if w is not None:
        y = y * w.view(shape) + b.view(shape)
    return y


def make_input(shape, dtype, channels_last=False, seed=0, scale=2.0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    return x


def randomize_affine(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(m, "weight", None) is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))


def compare_with_reference(name, shape, dtype, channels_last, opts=None, k=10):
    opts = dict(opts or {})
    m = build_norm(name, shape[1], **opts).to(dtype)
    randomize_affine(m)
    x = make_input(shape, dtype, channels_last).requires_grad_(True)
    dy = make_input(shape, dtype, channels_last, seed=2, scale=1.0, shift=0.0)
    y = m(x)
    y.backward(dy)
    fmt = torch.contiguous_format if not channels_last else \
        torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt), "layout or dtype not kept"

    x64 = x.detach().double().requires_grad_(True)
    w64 = m.weight.detach().double().requires_grad_(True) if getattr(m, "weight", None) is not None else None
    b64 = m.bias.detach().double().requires_grad_(True) if m.bias is not None else None
    y64 = reference(name, x64, w64, b64, eps=opts.get("eps", 1e-5), k=k)
    y64.backward(dy.double())

    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
    if w64 is not None:
        torch.testing.assert_close(m.weight.grad.double(), w64.grad, **tol)
    if b64 is not None:
        torch.testing.assert_close(m.bias.grad.double(), b64.grad, **tol)


# ---------------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", LP + ["mean"])
def test_against_reference_4d(name, dtype, channels_last, be):
    with backend(be):
        compare_with_reference(name, (6, 5, 7, 5), dtype, channels_last)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", LP + ["mean"])
def test_against_reference_2d_and_shapes(name, be):
    with backend(be):
        compare_with_reference(name, (37, 6), torch.float64, False)
        compare_with_reference(name, (4, 3, 16, 20), torch.float32, False)  # runs of 320 >= 256 values
        compare_with_reference(name, (3, 4, 1, 1), torch.float64, True)  # n = 3 < k: k capped at n
        compare_with_reference(name, (5, 3, 7), torch.float64, False)  # (N, C, L), as BatchNorm1d takes
        compare_with_reference(name, (3, 4, 2, 3, 4), torch.float64, False)  # (N, C, D, H, W): BatchNorm3d's
        compare_with_reference(name, (3, 4, 2, 3, 4), torch.float32, True)  # channels_last_3d


@pytest.mark.parametrize("be", BACKENDS)
def test_topk_k_option_and_l2_lp(be):
    with backend(be):
        for k in (1, 3, 25):
            compare_with_reference("topk", (5, 4, 3, 3), torch.float64, False, {"k": k}, k=k)
            compare_with_reference("topk", (5, 4, 3, 3), torch.float64, True, {"k": k}, k=k)
        for cl in (False, True):
            compare_with_reference("l2", (6, 5, 4, 3), torch.float64, cl, {"impl": "lp"})
            compare_with_reference("l2", (6, 5, 4, 3), torch.float32, cl, {"impl": "lp"})


@pytest.mark.parametrize("be", BACKENDS)
def test_affine_false(be):
    with backend(be):
        for name in LP + ["mean"]:
            compare_with_reference(name, (6, 3, 4, 4), torch.float64, False, {"affine": False})


def test_linf_is_topk_with_k1_and_topk_ge_linf():
    x = make_input((16, 4, 5, 5), torch.float64)
    linf, top1, top10 = build_norm("linf", 4), build_norm("topk", 4, k=1), build_norm("topk", 4)
    torch.testing.assert_close(linf(x), top1(x))
    # the mean of the 10 largest is below the max: a smaller scale, a larger output
    assert (top10.running_scale < linf.running_scale).all()


def test_constants():
    assert C_L1 == pytest.approx(1.2533, abs=1e-4)
    for n, c in [(128, 0.4955), (1024, 0.4145), (32768, 0.3385), (802816, 0.2960)]:  # docs/paper.md §1.3
        assert c_linf(n) == pytest.approx(c, abs=1e-4)


# ---------------------------------------------------------------------------------------------- l2 == torch
@pytest.mark.parametrize("impl", ["torch", "lp"])
@pytest.mark.parametrize("shape,channels_last", [((8, 6, 5, 4), False), ((8, 6, 5, 4), True), ((24, 6), False)],
                         ids=["nchw", "nhwc", "2d"])
def test_l2_matches_torch_batchnorm(impl, shape, channels_last):
    torch.manual_seed(0)
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(shape[1]).double()
    m = build_norm("l2", shape[1], impl=impl).double()
    randomize_affine(ref)
    m.load_state_dict(ref.state_dict())
    for step in range(3):
        x = make_input(shape, torch.float64, channels_last, seed=step).requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        dy = make_input(shape, torch.float64, channels_last, seed=10 + step)
        y, yr = m(x), ref(xr)
        y.backward(dy)
        yr.backward(dy)
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[key], value, msg=key)
    m.eval()
    ref.eval()
    x = make_input(shape, torch.float64, channels_last, seed=99)
    torch.testing.assert_close(m(x), ref(x))


def test_l2_torch_is_a_torch_batchnorm():
    m = build_norm("l2", 4)
    assert isinstance(m, BatchNorm) and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    assert isinstance(build_norm("l2", 4, impl="lp"), L2LpBatchNorm)


# ---------------------------------------------------------------------------------------------- running stats
@pytest.mark.parametrize("name", LP)
def test_running_statistics_and_eval(name):
    m = build_norm(name, 3, momentum=0.25).double()
    randomize_affine(m)
    rm, rs = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.equal(m.running_mean, rm) and torch.equal(m.running_scale, rs)
    for step in range(3):
        x = make_input((10, 3, 4, 4), torch.float64, seed=step)
        m(x)
        d = x - x.mean((0, 2, 3), keepdim=True)
        n = x.numel() // 3
        if name == "l1":
            f = C_L1 * d.abs().mean((0, 2, 3))
        elif name == "linf":
            f = c_linf(n) * d.abs().amax((0, 2, 3))
        else:
            f = c_linf(n) * d.abs().transpose(0, 1).reshape(3, -1).topk(10, 1).values.mean(1)
        rm = 0.75 * rm + 0.25 * x.mean((0, 2, 3))
        rs = 0.75 * rs + 0.25 * f
        torch.testing.assert_close(m.running_mean, rm)
        torch.testing.assert_close(m.running_scale, rs)
    assert int(m.num_batches_tracked) == 3
    m.eval()
    x = make_input((2, 3, 4, 4), torch.float64, seed=7)
    expected = (x - rm.view(1, -1, 1, 1)) / (rs.view(1, -1, 1, 1) + m.eps) * m.weight.view(1, -1, 1, 1) \
        + m.bias.view(1, -1, 1, 1)
    before = (m.running_mean.clone(), m.running_scale.clone())
    torch.testing.assert_close(m(x), expected)
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_scale, before[1])
    m(x[:1, :, :1, :1])  # a single value per channel is fine in eval


def test_momentum_none_is_cumulative_average_and_mean_running():
    m = build_norm("l1", 2, momentum=None).double()
    xs = [make_input((8, 2, 3, 3), torch.float64, seed=s) for s in range(3)]
    for x in xs:
        m(x)
    torch.testing.assert_close(m.running_mean, torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0))
    mm = build_norm("mean", 2, momentum=0.5).double()
    for x in xs:
        mm(x)
    expected = torch.zeros(2, dtype=torch.float64)
    for x in xs:
        expected = 0.5 * expected + 0.5 * x.mean((0, 2, 3))
    torch.testing.assert_close(mm.running_mean, expected)
    mm.eval()
    x = xs[0]
    torch.testing.assert_close(mm(x), x - expected.view(1, -1, 1, 1) + mm.bias.view(1, -1, 1, 1))


# ---------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", ["l1", "linf", "topk", "l2"])
def test_scale_invariance(name, be):
    x = make_input((8, 4, 5, 5), torch.float64)
    with backend(be):
        m = build_norm(name, 4, eps=0.0, **({"impl": "lp"} if name == "l2" else {})).double()
        randomize_affine(m)
        y = m(x)
        for c in (1e-3, 3.7, 250.0):
            torch.testing.assert_close(m(c * x), y, rtol=1e-10, atol=1e-10)
        m_eps = build_norm(name, 4, **({"impl": "lp"} if name == "l2" else {})).double()  # default eps
        torch.testing.assert_close(m_eps(10 * x), m_eps(x), rtol=1e-4, atol=1e-4)


def test_l1_estimates_gaussian_sigma():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.3, 1.0, 7.0])
    x = torch.randn(256, 3, 32, 32, generator=g) * sigma.view(1, -1, 1, 1) + 2.0  # n = 262144 per channel
    m = build_norm("l1", 3, momentum=1.0)
    m(x)
    ratio = m.running_scale / sigma
    assert ((ratio - 1).abs() < 0.01).all(), ratio
    # L-inf and Top-10 come out at about 1.1-1.45 sigma (docs/paper.md §1.3)
    for name in ("linf", "topk"):
        m = build_norm(name, 3, momentum=1.0)
        m(x)
        ratio = m.running_scale / sigma
        assert ((ratio > 1.0) & (ratio < 1.6)).all(), (name, ratio)


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", ["l1", "linf", "topk", "l2", "mean"])
def test_gradcheck_float64(name, be):
    opts = {"impl": "lp"} if name == "l2" else ({"k": 4} if name == "topk" else {})
    with backend(be):
        for shape, cl in [((3, 2, 3, 4), False), ((3, 2, 3, 4), True), ((9, 3), False)]:
            m = build_norm(name, shape[1], **opts).double()
            randomize_affine(m)
            x = make_input(shape, torch.float64, cl).requires_grad_(True)
            params = [p for p in (getattr(m, "weight", None), m.bias) if p is not None]

            def fn(inp, *ps, m=m):
                return m(inp)

            assert gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_saved_bytes_for_backward(channels_last):
    x = make_input((16, 32, 8, 8), torch.float32, channels_last).requires_grad_(True)
    bn = saved_bytes(torch.nn.BatchNorm2d(32), x)
    for be in BACKENDS:
        with backend(be):
            assert saved_bytes(build_norm("l1", 32), x) <= 1.0 * bn
            assert saved_bytes(build_norm("linf", 32), x) <= 1.0 * bn
            assert saved_bytes(build_norm("topk", 32), x) <= 1.25 * bn
            assert saved_bytes(build_norm("mean", 32), x) < 0.1 * bn


def activation_allocations(module, x, g) -> int:
    """How many tensors of at least x's size one training forward+backward allocates (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.autograd.grad(module(x), [x], g)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.autograd.grad(module(x), [x], g)
    return sum(e.self_cpu_memory_usage >= x.numel() * x.element_size() for e in prof.events())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_no_more_fresh_activation_buffers_than_batchnorm(channels_last):
    """As users run (glibc's default allocator, no mallopt): each fresh activation-sized buffer costs page faults,
    so on the default CPU backend the layers allocate no more of them per call than nn.BatchNorm2d (y and dx)."""
    x = make_input((16, 32, 8, 8), torch.float32, channels_last).requires_grad_(True)
    g = make_input((16, 32, 8, 8), torch.float32, channels_last, seed=4)
    bn = activation_allocations(torch.nn.BatchNorm2d(32), x, g)
    assert bn >= 2
    for name, opts in [("l1", {}), ("linf", {}), ("topk", {}), ("topk_ghost", {}), ("mean", {}),
                       ("l2", {"impl": "lp"})]:
        assert activation_allocations(build_norm(name, 32, **opts), x, g) <= bn, name


# ---------------------------------------------------------------------------------------------- paths
def test_nan_input_gives_nan_not_a_crash():
    x = make_input((4, 3, 5, 5), torch.float32)
    x[1, 1, 2, 2] = float("nan")
    for be in BACKENDS:
        for cl in (False, True):
            with backend(be):
                for name in LP:
                    xi = (x.contiguous(memory_format=torch.channels_last) if cl else x.clone()).requires_grad_(True)
                    y = build_norm(name, 3)(xi)
                    assert y[:, 1].isnan().all() and not y[:, 0].isnan().any()
                    y.sum().backward()
                    assert not xi.grad[:, 0].isnan().any()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_threads_agree(channels_last):
    """The CPU kernels split the work over torch.get_num_threads() threads (above 32768 values)."""
    x = make_input((32, 48, 8, 8), torch.float32, channels_last)
    dy = make_input((32, 48, 8, 8), torch.float32, channels_last, seed=3)
    old = torch.get_num_threads()
    results = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            out = []
            for name in LP + ["mean"]:
                xi = x.clone().requires_grad_(True)
                m = build_norm(name, 48)
                y = m(xi)
                y.backward(dy)
                out += [y, xi.grad, m.bias.grad, m.running_mean]
            results.append(out)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- precision
def test_stats_dtype_float16_naive_l2_overflows_and_l1_does_not():
    x = make_input((16, 3, 6, 6), torch.float32, scale=1.0, shift=0.0) * 300  # |x - mu| > 256
    xh = x.half()
    l2 = build_norm("l2", 3, impl="lp")
    y = l2(xh)
    assert y.dtype == torch.float16
    assert torch.isinf(l2.running_var).any() or (y.float().abs() < 1e-3).all()  # squares overflow in fp16
    for name in LP:
        m = build_norm(name, 3)
        y = m(xh)
        assert y.dtype == torch.float16 and torch.isfinite(y).all()
        ref = build_norm(name, 3)(x)
        torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02)
    l2_32 = build_norm("l2", 3, impl="lp", stats_dtype=torch.float32)
    y = l2_32(xh)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), build_norm("l2", 3, impl="lp")(x), rtol=0.01, atol=0.01)
    y = build_norm("l2", 3, stats_dtype="float32")(xh)  # impl torch, statistics in float32
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_stats_dtype_grads_keep_input_dtype():
    x = make_input((8, 3, 4, 4), torch.float16, scale=1.0).requires_grad_(True)
    for name in LP + ["mean"]:
        for sd in (None, torch.float32):
            m = build_norm(name, 3, stats_dtype=sd).half()
            m(x).float().sum().backward()
            assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
            assert m.bias.grad.dtype == torch.float16
            x.grad = None
            assert m.stats_dtype == sd


def test_autocast_keeps_input_dtype():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(4, 3, 8, 8)
    for name in NORM_NAMES:
        m = build_norm(name, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = conv(x)
            y = m(h)
        assert y.dtype == h.dtype, name


def test_last_max_dev():
    x = make_input((8, 3, 4, 4), torch.float64)
    true = (x - x.mean((0, 2, 3), keepdim=True)).abs().amax()
    for name, opts in [("linf", {}), ("topk", {}), ("l1", {"track_max_dev": True}), ("mean", {"track_max_dev": True}),
                       ("l2", {"track_max_dev": True}), ("l2", {"impl": "lp", "track_max_dev": True})]:
        for be in BACKENDS:
            with backend(be):
                m = build_norm(name, 3, **opts).double()
                m(x)
                assert m.last_max_dev.dim() == 0 and not m.last_max_dev.requires_grad
                torch.testing.assert_close(m.last_max_dev, true, msg=name)
    m = build_norm("linf", 3).double()
    m(x)
    seen = m.last_max_dev
    m.eval()
    m(2 * x)  # eval: running statistics, the last training batch's value stays
    assert m.last_max_dev is seen
    m = build_norm("l1", 3).double()
    m(x)
    assert m.last_max_dev is None
    assert "last_max_dev" not in m.state_dict()


# ---------------------------------------------------------------------------------------------- API
def test_factory_repr_and_detection():
    factory = norm_factory("topk", k=5, eps=1e-4)
    assert isinstance(factory, functools.partial)
    layer = factory(16)
    assert layer.k == 5 and layer.num_features == 16 and layer.eps == 1e-4
    for name in NORM_NAMES:
        layer = build_norm(name, 8)
        assert f"norm={name}" in repr(layer)
        assert is_norm_layer(layer)
        assert layer.stats_dtype is None
    assert is_norm_layer(torch.nn.BatchNorm2d(3)) and is_norm_layer(torch.nn.BatchNorm1d(3))
    assert not is_norm_layer(torch.nn.Conv2d(3, 3, 1)) and not is_norm_layer(torch.nn.LayerNorm(3))
    assert build_norm("none", 8)(torch.ones(2, 8)).equal(torch.ones(2, 8))


def test_bad_input_messages():
    def msg(fn):
        with pytest.raises(ConfigError) as e:
            fn()
        text = str(e.value)
        assert "\n" not in text
        return text

    text = msg(lambda: build_norm("l3", 4))
    assert "'l3'" in text and "l1" in text and "topk" in text
    text = msg(lambda: norm_factory("batch"))
    assert "'batch'" in text
    assert "'k'" in msg(lambda: build_norm("l1", 4, k=3))
    assert "'eps'" in msg(lambda: build_norm("mean", 4, eps=1e-5))
    assert "'foo'" in msg(lambda: norm_factory("topk", foo=1))
    assert "k must be" in msg(lambda: build_norm("topk", 4, k=0))
    assert "momentum" in msg(lambda: build_norm("l1", 4, momentum=2.0))
    assert "float32" in msg(lambda: build_norm("l1", 4, stats_dtype="int8"))
    assert "'cudnn'" in msg(lambda: build_norm("l2", 4, impl="cudnn"))
    assert "num_features" in msg(lambda: build_norm("l1", 0))
    for name in ("l2", "l1", "linf", "topk", "mean"):
        m = build_norm(name, 4)
        text = msg(lambda m=m: m(torch.randn(8)))
        assert "1-D" in text and "(8,)" in text
        text = msg(lambda m=m: m(torch.randn(2, 4, 1, 1, 1, 3)))
        assert "6-D" in text and "5-D" in text
        text = msg(lambda m=m: m(torch.randn(2, 5, 3, 3)))
        assert "5 channels" in text and "num_features=4" in text
        text = msg(lambda m=m: m(torch.randn(1, 4)))
        assert "more than 1 value per channel" in text
        text = msg(lambda m=m: m(torch.randn(1, 4, 1, 1)))
        assert "more than 1 value per channel" in text


# ---------------------------------------------------------------------------------------------- C_L1 ablation
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("l1_scale", [0.25, 4.0])
def test_l1_scale_multiplies_the_constant(l1_scale, be):
    """l1_scale * sqrt(pi/2): the paper's ablation of C_L1; outputs, gradients and running scale follow."""
    with backend(be):
        m = build_norm("l1", 5, l1_scale=l1_scale, momentum=1.0).double()
        randomize_affine(m)
        x = make_input((6, 5, 7, 5), torch.float64).requires_grad_(True)
        y = m(x)
        x_ref = x.detach().clone().requires_grad_(True)
        shape = (1, -1, 1, 1)
        mu = x_ref.mean((0, 2, 3), keepdim=True)
        s = l1_scale * C_L1 * (x_ref - mu).abs().mean((0, 2, 3), keepdim=True) + m.eps
        y_ref = (x_ref - mu) / s * m.weight.detach().view(shape) + m.bias.detach().view(shape)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad)
        plain = build_norm("l1", 5, momentum=1.0).double()
        plain(x.detach())
        torch.testing.assert_close(m.running_scale, l1_scale * plain.running_scale)


def test_l1_scale_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="l1_scale must be a number > 0, got -1"):
        build_norm("l1", 4, l1_scale=-1)
    with pytest.raises(ConfigError, match="l1_scale"):
        build_norm("linf", 4, l1_scale=2.0)
