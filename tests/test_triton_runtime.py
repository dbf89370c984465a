"""The Triton backend's runtime: where it can run (the interpreter on the CPU, chosen at each launch), its errors,
its tile plans and traffic model, and the compiled (CUDA) form of every kernel, built here without a GPU."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from normrepro.errors import ConfigError  # noqa: E402
from normrepro.norms import triton_kernels as tk  # noqa: E402
from normrepro.norms.functional import view3  # noqa: E402
from normrepro.norms.triton_kernels import runtime, tiles  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def small_x3():
    return view3(torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0)) + 2)


def test_interpreter_chosen_at_launch_after_triton_was_imported_without_it():
    """triton (and triton.language's own jitted functions) imported with TRITON_INTERPRET unset, as
    torch.compile does; setting it afterwards still runs the kernels interpreted."""
    code = ("import os, sys, torch, triton.language as tl\n"
            "assert type(tl.standard._sum_combine).__name__ == 'JITFunction'\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "from normrepro.norms import triton_kernels as tk\n"
            "x = torch.arange(24.0).view(2, 3, 4)\n"
            "assert torch.equal(tk.channel_sums(x, torch.float32), x.sum((0, 2)))\n"
            "d, i = tk.topk_dev(x, x.mean((0, 2)), 2, torch.float32)\n"
            "assert torch.equal(d.abs(), (x - x.mean((0, 2)).view(1, 3, 1)).transpose(0, 1).reshape(3, 8).abs()"
            ".topk(2).values)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------- availability and plans
def test_cpu_launch_needs_the_interpreter(monkeypatch):
    x3 = small_x3()
    assert tk.available("cpu") and tk.unavailable_reason("cpu") is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not tk.available("cpu")
    msg = tk.unavailable_reason("cpu")
    assert "backend 'triton' needs a CUDA GPU, or TRITON_INTERPRET=1" in msg
    assert "NORMREPRO_NORM_BACKEND=torch|native" in msg
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        tk.channel_sums(x3, F32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read again at the next launch
    assert torch.allclose(tk.channel_sums(x3, F32), x3.sum((0, 2)))


def test_import_without_triton_never_fails(monkeypatch):
    import importlib

    import normrepro.norms as norms_pkg

    monkeypatch.setattr(norms_pkg, "triton_kernels", tk)  # the re-import below rebinds it; restored after
    for name in [m for m in sys.modules if m == "triton" or m.startswith(("triton.", tk.__name__))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    mod = importlib.import_module("normrepro.norms.triton_kernels")
    assert not mod.available() and "needs the triton package" in mod.unavailable_reason("cuda")
    with pytest.raises(ConfigError, match="backend 'triton'.*NORMREPRO_NORM_BACKEND"):
        mod.channel_sums(small_x3(), F32)


def test_bad_inputs():
    x3 = small_x3()
    with pytest.raises(ValueError, match="3-D"):
        tk.channel_sums(x3[0], F32)
    with pytest.raises(TypeError, match="compute dtype"):
        tk.channel_sums(x3, torch.int32)
    with pytest.raises(ValueError, match="do not match"):
        tk.grad_sums(x3, x3[:2], x3.mean((0, 2)), F32)


def test_plans_tile_along_the_unit_stride_axis():
    nchw = view3(torch.empty(8, 64, 56, 56))
    p = tiles.plan(nchw, "reduce")
    assert (p.bc, p.bb) == (1, 2048) and p.ba == 1 and p.programs >= 1
    cl = view3(torch.empty(8, 64, 56, 56).contiguous(memory_format=torch.channels_last))
    p = tiles.plan(cl, "reduce")
    assert (p.ba, p.bc, p.bb) == (32, 64, 1)
    p16 = tiles.plan(cl[:, :32].half(), "map")  # 32 channels: the tile grows along A
    assert p16.ba * p16.bc * p16.bb * 2 == tiles.TILE_BYTES and (p16.ba, p16.bc) == (128, 32)
    pk = tiles.plan(cl, "topk")
    assert (pk.ba, pk.bc) == (1024, 8) and pk.iters == 1
    a_blocks = math.ceil(cl.shape[0] / 32)
    assert p.iters * p.n_a >= a_blocks > (p.n_a - 1) * p.iters  # every a-block covered exactly once


def test_traffic_model():
    assert tk.layer_bytes("l1", 1000, 4) == 9 * 4000 and tk.layer_bytes("l2", 1000, 2) == 9 * 2000
    assert tk.layer_bytes("topk", 1000, 4) == 8 * 4000 and tk.layer_bytes("linf", 10, 4) == 8 * 40
    assert tk.layer_bytes("mean", 1000, 4) == 6 * 4000
    assert tk.primitive_bytes("input_grad", 10, 4, dy_bytes=2, out_bytes=2, with_x=False) == 40
    with pytest.raises(ValueError):
        tk.layer_bytes("bn", 1, 4)


# ------------------------------------------------------------------------- the compiled (CUDA) kernels
def compile_for_cuda(fn, args, kwargs, arch=90):
    """Compile a jitted kernel for an NVIDIA GPU of ``arch`` (no GPU needed), specialised like a real launch
    (int arguments equal to 1 as constants, 16-divisible ints and pointers as aligned)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_kernels_compile_for_cuda_with_vector_loads(monkeypatch, layout):
    """Every kernel, as the primitives launch it at a ResNet-like shape, compiles for sm_90 (Triton's own compiler
    and ptxas, no GPU), and the loads of the streaming kernels are vectorised (ld.global.v4)."""
    calls = []
    monkeypatch.setattr(runtime, "launch", lambda name, programs, *a, **kw: calls.append((name, a, kw)))
    x = torch.randn(4, 16, 32, 32)
    x3 = view3(x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x)
    mu = torch.zeros(16)
    tk.dev_stats(x3.half(), mu, F16, want_abs=True, want_sign=True, want_sq=True, want_max=True)
    tk.grad_sums(x3, x3, mu, F32)
    tk.topk_dev(x3, mu, 10, F32)
    tk.normalize(x3.bfloat16(), mu, mu, mu, torch.empty_like(x3.bfloat16()), BF16)
    tk.input_grad(x3, x3, mu, mu, mu, mu, mu, torch.empty_like(x3), F32)
    tk.scatter_add(x3.half(), torch.zeros(16, 10, dtype=torch.int64), torch.ones(16, 10))
    monkeypatch.delenv("TRITON_INTERPRET")
    jitted = runtime.kernels()
    assert not jitted.INTERPRET
    for name, args, kw in calls:
        ptx = compile_for_cuda(getattr(jitted, name), args, kw).asm["ptx"]
        assert f".entry {name}" in ptx
        if name not in ("topk_kernel", "scatter_add_kernel"):  # these gather
            assert "ld.global.v4" in ptx or "ld.global.nc.v4" in ptx, (name, set(re.findall(r"ld\.global[.\w]*", ptx)))
