"""The norms as registered torch ops (issue 15): opcheck of every op, the primitives of each backend against the
torch ones, fused == composed, backend choice and its errors, the Triton module plugged in by one table line,
and torch.compile(fullgraph=True) keeping each norm as one opaque op whose native kernels run in the graph."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from normrepro.errors import ConfigError
from normrepro.norms import _native, backend, backends, build_norm, compose, get_backend, set_backend
from normrepro.norms import formulas as FM
from normrepro.norms import prims_native as PN
from normrepro.norms import prims_torch as PT
from normrepro.norms.layout import view3

NATIVE = PN.usable()
needs_native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable: {PN.unusable_reason()}")
KINDS = [("l1", {}), ("topk", {"k": 3}), ("ghost", {"k": 3, "beta": 0.75}), ("ghost_bug", {"k": 3, "beta": 0.75}),
         ("l2", {})]


def _x(shape=(6, 5, 4, 4), dtype=torch.float64, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _spec(label: str, opts: dict, want_max=True) -> FM.LpSpec:
    kind = "topk" if label.startswith("ghost") else label
    return FM.LpSpec(kind=kind, eps=1e-5, c=1.3, want_max=want_max, ghost_bug=label == "ghost_bug", **opts)


def _fwd_args(x, spec, hist, cd, weight=True):
    c = x.shape[1]
    w = torch.rand(c, dtype=x.dtype, requires_grad=True) + 0.5 if weight else None
    b = torch.randn(c, dtype=x.dtype, requires_grad=True) if weight else None
    return (x.requires_grad_(True), w, b, hist, spec.kind, spec.eps, spec.c, spec.k, spec.beta, spec.ghost_bug, cd,
            spec.want_max)


# ---------------------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("label,opts", KINDS, ids=[k[0] for k in KINDS])
def test_opcheck_lp_ops(label, opts):
    spec = _spec(label, opts)
    hist = torch.rand(5, dtype=torch.float64) if spec.beta else None
    for cl, weight in ((False, True), (True, False)):
        args = _fwd_args(_x(channels_last=cl), spec, hist, torch.float64, weight)
        torch.library.opcheck(torch.ops.normrepro.lp_norm_fwd.default, args)
        out = [t.detach() for t in torch.ops.normrepro.lp_norm_fwd(*args)]
        w = args[1].detach() if weight else None
        bargs = (torch.randn_like(args[0]), args[0].detach(), w, out[1], out[3], out[4], out[5], spec.kind, spec.eps,
                 spec.c, spec.k, spec.beta, torch.float64, True)
        torch.library.opcheck(torch.ops.normrepro.lp_norm_bwd.default, bargs)
        sargs = (args[0], hist, spec.kind, spec.eps, spec.c, spec.k, spec.beta, spec.ghost_bug, torch.float64,
                 spec.want_max)
        torch.library.opcheck(torch.ops.normrepro.lp_norm_stats.default, sargs)


def test_opcheck_mean_ops_and_torch_backend():
    for be in ("torch", "native"):
        with backend(be):
            x = _x(channels_last=be == "torch").requires_grad_(True)
            b = torch.randn(5, dtype=torch.float64, requires_grad=True)
            torch.library.opcheck(torch.ops.normrepro.mean_norm_fwd.default, (x, b, torch.float64, True))
            torch.library.opcheck(torch.ops.normrepro.mean_norm_bwd.default,
                                  (torch.randn_like(x), torch.float64, True))
            torch.library.opcheck(torch.ops.normrepro.mean_norm_stats.default, (x, torch.float64, be == "torch"))
    with backend("torch"):
        torch.library.opcheck(torch.ops.normrepro.lp_norm_fwd.default,
                              _fwd_args(_x((9, 4)), _spec("l1", {}), None, torch.float64))


def test_fake_outputs_match_real():
    """register_fake's shapes, dtypes and strides are those of the real outputs (the compiled graph relies on it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for label, opts in KINDS:
        spec = _spec(label, opts, want_max=label == "l1")
        for cl in (False, True):
            x = _x(channels_last=cl).float()
            hist = torch.rand(5) if spec.beta else None
            args = _fwd_args(x, spec, hist, torch.float32)
            real = torch.ops.normrepro.lp_norm_fwd(*args)
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fake = torch.ops.normrepro.lp_norm_fwd(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                         for a in args])
            for r, f in zip(real, fake):
                assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), label


# ---------------------------------------------------------------------------------------------- primitives
@needs_native
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_native_primitives_equal_torch(dtype, layout):
    shape = (9, 7) if layout == "2d" else (5, 7, 3, 4)
    x3 = view3(_x(shape, dtype, layout == "nhwc"))
    dy3 = view3(_x(shape, dtype, layout == "nhwc", seed=1))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    c = x3.shape[1]
    mu = PT.channel_sums(x3, dtype).to(dtype) / (x3.shape[0] * x3.shape[2])
    torch.testing.assert_close(PN.channel_sums(x3, dtype), PT.channel_sums(x3, dtype), **tol)
    for flags in [(True, True, False, True), (False, False, True, False), (True, False, True, True)]:
        kw = dict(zip(("want_abs", "want_sign", "want_sq", "want_max"), flags))
        for a, b in zip(PN.dev_stats(x3, mu, dtype, **kw), PT.dev_stats(x3, mu, dtype, **kw)):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **tol)
    for k in (1, 4):
        (dn, iN), (dt, it) = PN.topk_dev(x3, mu, k, dtype), PT.topk_dev(x3, mu, k, dtype)
        torch.testing.assert_close(dn, dt, **tol)
        assert torch.equal(iN, it)  # random data: no ties
    g = torch.Generator().manual_seed(3)
    vec = [torch.randn(c, generator=g, dtype=torch.float64).to(dtype) for _ in range(4)]
    for shift in (vec[1], None):
        yn, yt = torch.empty_like(x3), torch.empty_like(x3)
        PN.normalize(x3, mu, vec[0], shift, yn, dtype)
        PT.normalize(x3, mu, vec[0], shift, yt, dtype)
        torch.testing.assert_close(yn, yt, **tol)
    for xin in (x3, None):
        for a, b in zip(PN.grad_sums(xin, dy3, mu, dtype), PT.grad_sums(xin, dy3, mu, dtype)):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **tol)
    for kd, ks in [(vec[1], None), (None, vec[2]), (vec[1], vec[2]), (None, None)]:
        xin = x3 if kd is not None or ks is not None else None
        on, ot = torch.empty_like(x3), torch.empty_like(x3)
        PN.input_grad(xin, dy3, mu, vec[0], kd, ks, vec[3], on, dtype)
        PT.input_grad(xin, dy3, mu, vec[0], kd, ks, vec[3], ot, dtype)
        torch.testing.assert_close(on, ot, **tol)


@needs_native
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_native_topk_with_ties_and_zeros(layout):
    """Repeated values (ties in any order) and zero deviations: the same k largest |d| as torch.topk."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (40, 6, 3, 3), generator=g).double()
    x = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x
    x3 = view3(x)
    mu = torch.zeros(6, dtype=torch.float64)
    for k in (1, 10, 37):
        (dn, iN), (dt, _) = PN.topk_dev(x3, mu, k, torch.float64), PT.topk_dev(x3, mu, k, torch.float64)
        torch.testing.assert_close(dn.abs(), dt.abs(), rtol=0, atol=0)
        flat = x3.transpose(0, 1).reshape(6, -1)
        torch.testing.assert_close(flat.gather(1, iN), dn, rtol=0, atol=0)  # the indices point at those values


def test_torch_primitives_fp16_squares_overflow_like_torch():
    """Elementwise math in cd: float16 d*d overflows past |d| = 255.9 (the paper's naive L2), sums in float32."""
    x3 = torch.tensor([[[0.0, 300.0]], [[-300.0, 0.0]]], dtype=torch.float16)  # (2, 1, 2), mu = 0
    mu = torch.zeros(1, dtype=torch.float16)
    s_abs, _, sq, mx = PT.dev_stats(x3, mu, torch.float16, want_abs=True, want_sign=False, want_sq=True,
                                    want_max=True)
    assert torch.isinf(sq).all() and s_abs.dtype == torch.float32 and float(s_abs) == 600.0 and float(mx) == 300.0
    _, _, sq32, _ = PT.dev_stats(x3, mu, torch.float32, want_abs=False, want_sign=False, want_sq=True,
                                 want_max=False)
    assert float(sq32) == 180000.0


# ---------------------------------------------------------------------------------------------- fused
@needs_native
@pytest.mark.parametrize("label,opts", KINDS[:4], ids=[k[0] for k in KINDS[:4]])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_fused_kernels_equal_composed_primitives(label, opts, layout):
    spec = _spec(label, opts)
    x = _x((6, 5, 4, 4), torch.float64, layout == "nhwc")
    w, b = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    hist = torch.rand(5, dtype=torch.float64) if spec.beta else None
    dy = _x((6, 5, 4, 4), torch.float64, layout == "nhwc", seed=4)
    with backend("native"):
        results = []
        for comm in (compose.LOCAL, compose.Local(fuse=False)):
            r = compose.lp_forward(x, w, b, hist, spec, torch.float64, comm)
            grads = compose.lp_backward(dy, x, w, r.mu, r.s, None if spec.kind == "topk" else r.aux, r.sel, spec,
                                        torch.float64, True, comm)
            results.append([r.y, r.mu, r.f, r.s, r.aux, r.sel, r.max_dev, r.history, *grads])
    for u, v in zip(*results):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- backends
def test_backend_choice_and_errors(monkeypatch):
    x32, x16 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2).half()
    assert get_backend() == "auto"
    assert backends.primitives(x32, torch.float32) is (PN if NATIVE else PT)
    assert backends.primitives(x16, torch.float16) is PT  # the native kernels are float32/float64
    with backend("torch"):
        assert get_backend() == "torch" and backends.primitives(x32, torch.float32) is PT
    monkeypatch.setenv("NORMREPRO_NORM_BACKEND", "torch")
    set_backend(None)  # read the environment again
    assert backends.primitives(x32, torch.float32) is PT
    monkeypatch.setenv("NORMREPRO_NORM_BACKEND", "cuda")
    set_backend(None)
    with pytest.raises(ConfigError, match="unknown NORMREPRO_NORM_BACKEND 'cuda'; choose one of: auto, native"):
        build_norm("l1", 3)(x32)
    monkeypatch.delenv("NORMREPRO_NORM_BACKEND")
    set_backend(None)
    with pytest.raises(ConfigError, match="unknown norm backend 'gpu'"):
        set_backend("gpu")
    monkeypatch.setenv("NORMREPRO_NATIVE", "0")  # off: auto uses torch ops, a forced native says why it cannot
    set_backend(None)  # read again
    assert backends.primitives(x32, torch.float32) is PT
    with backend("native"), pytest.raises(ConfigError) as e:
        build_norm("l1", 3)(x32)
    assert "'native'" in str(e.value) and "NORMREPRO_NATIVE=0" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("NORMREPRO_NATIVE")
    monkeypatch.setattr(_native, "lib", lambda: None)  # as without a C++ compiler
    monkeypatch.setattr(_native, "error", lambda: "RuntimeError: no C++ compiler found (set CXX)")
    set_backend(None)
    with backend("native"), pytest.raises(ConfigError, match="'native' cannot run: .*no C\\+\\+ compiler.*use"):
        build_norm("topk", 3)(x32)
    assert backends.primitives(x32, torch.float32) is PT  # auto falls back
    monkeypatch.undo()
    set_backend(None)
    assert backends.primitives(x32, torch.float32) is (PN if NATIVE else PT)


def test_triton_backend_errors_name_the_way_out(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fake = types.ModuleType("fake_triton_prims")
    fake.available = lambda: True
    monkeypatch.setitem(sys.modules, "fake_triton_prims", fake)
    monkeypatch.setitem(backends.PRIMITIVE_MODULES, "triton", "fake_triton_prims")
    backends._module.cache_clear()
    try:
        with backend("triton"), pytest.raises(ConfigError) as e:
            build_norm("l1", 3)(torch.randn(4, 3))
        assert "'triton'" in str(e.value) and "TRITON_INTERPRET=1" in str(e.value) and "torch" in str(e.value)
        fake.available = lambda: False
        fake.unavailable_reason = lambda: "triton is not installed"
        with backend("triton"), pytest.raises(ConfigError, match="'triton' cannot run: triton is not installed"):
            build_norm("l1", 3)(torch.randn(4, 3))
        monkeypatch.setitem(backends.PRIMITIVE_MODULES, "triton", "no_such_module_here")
        backends._module.cache_clear()
        with backend("triton"), pytest.raises(ConfigError, match="'triton' is not available"):
            build_norm("l1", 3)(torch.randn(4, 3))
    finally:
        backends._module.cache_clear()


def test_a_backend_module_plugs_in_with_one_table_line(monkeypatch):
    """Any module with the primitive API runs every norm: here the torch primitives behind a call counter, put in
    the triton slot (the Triton helper's module goes there: ``backends.PRIMITIVE_MODULES['triton']``)."""
    calls = []
    fake = types.ModuleType("counting_prims")

    def counting(name):
        fn = getattr(PT, name)

        def wrapped(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        return wrapped

    for name in ("channel_sums", "dev_stats", "topk_dev", "normalize", "grad_sums", "input_grad"):
        setattr(fake, name, counting(name))
    monkeypatch.setitem(sys.modules, "counting_prims", fake)
    monkeypatch.setitem(backends.PRIMITIVE_MODULES, "triton", "counting_prims")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends._module.cache_clear()
    try:
        for name in ("l1", "topk", "topk_ghost", "l2", "mean"):
            opts = {"impl": "lp"} if name == "l2" else {}
            x = _x((6, 4, 3, 3)).requires_grad_(True)
            outs = []
            for be in ("triton", "torch"):
                with backend(be):
                    m = build_norm(name, 4, **opts).double()
                    y = m(x)
                    (gx,) = torch.autograd.grad(y, x, _x((6, 4, 3, 3), seed=5))
                    outs.append((y, gx, m.running_mean))
            for u, v in zip(*outs):
                torch.testing.assert_close(u, v, rtol=0, atol=0)
        assert {"channel_sums", "normalize", "grad_sums", "input_grad", "topk_dev", "dev_stats"} <= set(calls)
    finally:
        backends._module.cache_clear()


# ---------------------------------------------------------------------------------------------- compile
def _tiny(name, opts):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build_norm(name, 4, **opts), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 6), build_norm(name, 6, **opts), nn.Linear(6, 3))


def _two_steps(model, step_model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for s in range(2):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(step_model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model[1].last_max_dev


COMPILE_CASES = [("l1", {"track_max_dev": True}), ("linf", {}), ("topk", {}), ("topk_ghost", {}),
                 ("topk_ghost", {"ghost_bug": True}), ("mean", {"track_max_dev": True}), ("l2", {"impl": "lp"}),
                 ("l2", {}), ("l1", {"momentum": None})]


def _compile_matches_eager(name, opts, backend_name):
    m = _tiny(name, opts)
    eager_state, eager_dev = _two_steps(m, m)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend_name)(gm, example_inputs)

    m = _tiny(name, opts)
    torch._dynamo.reset()
    state, dev = _two_steps(m, torch.compile(m, fullgraph=True, backend=capture))
    for key, want in eager_state.items():
        torch.testing.assert_close(state[key], want, rtol=1e-5, atol=1e-6, msg=key)
    assert (dev is None) == (eager_dev is None) and (dev is None or torch.allclose(dev, eager_dev))
    return [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]


_IDS = [f"{n}-{'-'.join(o) or 'default'}" for n, o in COMPILE_CASES]
OPAQUE_CASES = [c for c in COMPILE_CASES if c[0] in ("l1", "topk_ghost", "mean") or c[1].get("impl") == "lp"]


def _check_graph_ops(name, opts, targets, mode):
    if name == "l2" and "impl" not in opts:
        return  # torch's own batch norm
    op = {"split": "stats", "opaque": "fwd"}[mode]
    op = f"normrepro.mean_norm_{op}" if name == "mean" else f"normrepro.lp_norm_{op}"
    assert sum(t.startswith(op) for t in targets) == 2, targets  # the model's two norm layers, one op each
    assert not any(t.startswith("normrepro.") and not t.startswith(op) for t in targets), targets


@pytest.mark.parametrize("name,opts", COMPILE_CASES, ids=_IDS)
def test_compiled_fullgraph_two_steps_equal_eager(name, opts):
    """fullgraph=True: no graph break. Default (split): each norm's statistics are one opaque op, its output torch
    ops that inductor can fuse with the neighbouring ones."""
    _check_graph_ops(name, opts, _compile_matches_eager(name, opts, "aot_eager"), "split")


@pytest.mark.parametrize("name,opts", OPAQUE_CASES, ids=[f"{n}-{'-'.join(o) or 'default'}" for n, o in OPAQUE_CASES])
def test_compiled_opaque_mode_one_op_per_norm(name, opts, monkeypatch):
    """NORMREPRO_COMPILED_NORMS=opaque: each norm is one op in the forward graph (its backward another)."""
    monkeypatch.setenv("NORMREPRO_COMPILED_NORMS", "opaque")
    _check_graph_ops(name, opts, _compile_matches_eager(name, opts, "aot_eager"), "opaque")


def test_compiled_mode_bad_value(monkeypatch):
    monkeypatch.setenv("NORMREPRO_COMPILED_NORMS", "fused")
    m = _tiny("l1", {})
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown NORMREPRO_COMPILED_NORMS 'fused'; choose one of: opaque, split"):
        torch.compile(m, fullgraph=True, backend="aot_eager")(torch.randn(8, 3, 6, 6))


@needs_native
@pytest.mark.parametrize("mode,kernels", [("split", {"nr_sums", "nr_dev_stats"}), ("opaque", {"nr_fwd", "nr_bwd"})])
def test_native_kernels_run_inside_the_compiled_graph(monkeypatch, mode, kernels):
    calls = []
    real = _native.call
    monkeypatch.setattr(_native, "call", lambda name, *a: (calls.append(name), real(name, *a))[1])
    monkeypatch.setenv("NORMREPRO_COMPILED_NORMS", mode)
    m = _tiny("l1", {})
    torch._dynamo.reset()
    _two_steps(m, torch.compile(m, fullgraph=True, backend="aot_eager"))
    assert kernels <= set(calls), set(calls)


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", COMPILE_CASES, ids=_IDS)
def test_inductor_fullgraph_two_steps_equal_eager(name, opts):
    _compile_matches_eager(name, opts, "inductor")


def test_functional_forms():
    from normrepro.norms import lp_batch_norm, mean_batch_norm

    x = _x((6, 4, 3, 3))
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    for kind, name, opts in (("l1", "l1", {}), ("linf", "linf", {}), ("topk", "topk", {"k": 4}),
                             ("l2", "l2", {"impl": "lp"})):
        m = build_norm(name, 4, **opts).double()
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
        torch.testing.assert_close(lp_batch_norm(x, w, b, kind, k=opts.get("k", 10)), m(x))
    torch.testing.assert_close(mean_batch_norm(x, b), x - x.mean((0, 2, 3), keepdim=True) + b.view(1, -1, 1, 1))

