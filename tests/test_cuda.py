"""CUDA: the Triton primitives at ResNet-18 shapes against the torch formulas, and the norm layers with the
``triton`` backend against the ``torch`` backend. Marked ``cuda``; skipped without a GPU (scripts/gpu_check.sh
runs them). The last test checks, on a machine without a GPU, that gpu_check.sh refuses to run."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
EPS = {F32: 2.0**-23, F16: 2.0**-10, BF16: 2.0**-7}

# (shape, layout, dtype): ResNet-18 activations at batch 128 (and one at 256), both layouts, three dtypes
SHAPES = [((128, 64, 56, 56), "nchw", F32), ((128, 64, 56, 56), "cl", F16), ((128, 128, 28, 28), "cl", BF16),
          ((128, 256, 14, 14), "nchw", F16), ((256, 512, 7, 7), "cl", F32), ((256, 512, 7, 7), "nchw", BF16),
          ((256, 512), "2d", F16)]


def _x(shape, layout, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(shape, device="cuda", generator=g) * 2 + 1).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x


def _x_distinct_tail(shape, layout, dtype, seed):
    """Like _x, with the 12 largest values of each channel set apart (8, 8.5, ..., 13.5 at random places) so that
    the Top-k selection has no ties, which two backends may break differently."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(shape, device="cuda", generator=g) * 2 + 1).clamp(-6, 6)
    flat = x.transpose(0, 1).reshape(shape[1], -1)
    pos = torch.rand(flat.shape, device="cuda", generator=g).argsort(1)[:, :12]
    flat.scatter_(1, pos, (8 + 0.5 * torch.arange(12, device="cuda", dtype=x.dtype)).expand(shape[1], 12))
    x = flat.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x.contiguous()


def _near(got, want, terms, cd):
    """Equal up to a couple of roundings in cd relative to the magnitude of the terms (FMA contraction on the
    GPU rounds once where torch rounds twice)."""
    err = (got.double() - want.double()).abs()
    assert torch.all(err <= 2 * EPS[cd] * terms.double() + 1e-30), err.max()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape,layout,dtype", SHAPES)
def test_primitives_match_torch_on_cuda(shape, layout, dtype):
    from normrepro.norms import triton_kernels as tk
    from normrepro.norms.functional import view3

    x3, dy3 = view3(_x(shape, layout, dtype, 0)), view3(_x(shape, layout, dtype, 1))
    na, c, b = x3.shape
    n = na * b
    v = lambda t: t.view(1, c, 1)
    sums = tk.channel_sums(x3, dtype)
    ref = x3.double().sum((0, 2))
    assert torch.all((sums.double() - ref).abs() <= 1e-5 * x3.double().abs().sum((0, 2)))
    mu = (sums / n).to(dtype)
    d = x3 - v(mu)
    sa, ss, sq, mx = tk.dev_stats(x3, mu, dtype, want_abs=True, want_sign=True, want_sq=True, want_max=True)
    assert torch.all((sa.double() - d.abs().double().sum((0, 2))).abs() <= 1e-5 * d.abs().double().sum((0, 2)))
    assert torch.equal(ss, d.sign().float().sum((0, 2)))
    sq_ref = (d * d).double().sum((0, 2))
    assert torch.equal(sq.isinf(), sq_ref.isinf()) and torch.all((sq.double() - sq_ref).abs() <= 1e-5 * sq_ref)
    assert torch.equal(mx, d.abs().amax((0, 2)))
    g1, g2 = tk.grad_sums(x3, dy3, mu, dtype)
    assert torch.all((g1.double() - dy3.double().sum((0, 2))).abs() <= 1e-5 * dy3.double().abs().sum((0, 2)))
    prod = dy3 * d
    assert torch.all((g2.double() - prod.double().sum((0, 2))).abs() <= 1e-5 * prod.double().abs().sum((0, 2)))
    dev, idx = tk.topk_dev(x3, mu, 10, dtype)
    flat = d.transpose(0, 1).reshape(c, n)
    assert torch.equal(dev.abs(), flat.abs().topk(10, dim=1).values) and torch.equal(flat.gather(1, idx), dev)
    scale, shift = torch.rand(c, device="cuda").to(dtype) + 0.5, torch.randn(c, device="cuda").to(dtype)
    y = torch.empty_like(x3)
    tk.normalize(x3, mu, scale, shift, y, dtype)
    _near(y, d * v(scale) + v(shift), (d * v(scale)).abs() + v(shift).abs(), dtype)
    dx = torch.empty_like(x3)
    tk.input_grad(x3, dy3, mu, scale, shift, scale, shift, dx, dtype)
    terms = (v(scale) * dy3).abs() + (v(shift) * d).abs() + v(scale).abs() + v(shift).abs()
    _near(dx, v(scale) * dy3 + v(shift) * d + v(scale) * d.sign() + v(shift), terms, dtype)


@pytest.mark.cuda
@needs_cuda
def test_fp16_l2_squares_overflow_on_cuda():
    from normrepro.norms import triton_kernels as tk

    x3 = torch.tensor([-300.0, 300.0, 1.0, -1.0], device="cuda").view(4, 1, 1).to(F16)
    sq = tk.dev_stats(x3, torch.zeros(1, device="cuda", dtype=F16), F16, want_abs=False, want_sign=False,
                      want_sq=True, want_max=False)[2]
    assert torch.isinf(sq).all()


LAYERS = [("l1", {}), ("linf", {}), ("topk", {}), ("l2", {"impl": "lp"}), ("mean", {}),
          ("l1", {"stats_dtype": "float32"})]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name,opts", LAYERS)
@pytest.mark.parametrize("layout,dtype", [("nchw", F32), ("cl", F16), ("cl", BF16)])
def test_layers_triton_backend_matches_torch_backend(name, opts, layout, dtype):
    """build_norm(name) forward, backward and running statistics with NORMREPRO_NORM_BACKEND=triton equal the
    torch backend's, and the layer saves no more for the backward."""
    from normrepro.norms import backend, build_norm
    from normrepro.utils.bench import saved_bytes

    x = _x_distinct_tail((64, 128, 28, 28), layout, dtype, 2)
    dy = _x((64, 128, 28, 28), layout, dtype, 3)
    results = {}
    for be in ("torch", "triton"):
        with backend(be):
            m = build_norm(name, 128, **opts).cuda().train()
            xi = x.detach().clone().requires_grad_(True)
            y = m(xi)
            y.backward(dy)
            grads = [p.grad for p in m.parameters()]
            results[be] = (y.detach(), xi.grad, grads, [b.clone() for b in m.buffers()], saved_bytes(m, x))
    (y0, dx0, g0, b0, s0), (y1, dx1, g1, b1, s1) = results["torch"], results["triton"]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == F32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y1, y0, **tol)
    torch.testing.assert_close(dx1, dx0, **tol)
    for a, b in zip(g1 + b1, g0 + b0):
        torch.testing.assert_close(a, b, **tol)
    assert y1.is_contiguous(memory_format=torch.channels_last) == (layout == "cl")
    assert s1 <= s0


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    """scripts/gpu_check.sh exits non-zero with one clear message and writes nothing when no GPU is present."""
    if HAS_CUDA:
        pytest.skip("a GPU is present: gpu_check.sh would run the check")
    doc = tmp_path / "gpu.md"
    env = dict(os.environ, NORMREPRO_GPU_DOC=str(doc))
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    assert not doc.exists()
