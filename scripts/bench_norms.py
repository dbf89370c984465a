#!/usr/bin/env python
"""Benchmark the normalization layers against torch's nn.BatchNorm2d (cuDNN on a GPU).

For ResNet-18 activation shapes (CIFAR: 64×32×32, 128×16×16, 256×8×8, 512×4×4 at batch 128; on CUDA also batch
256), in NCHW and channels_last, prints the time of one training forward+backward of each norm (ms, median over
rounds), its ratio to nn.BatchNorm2d measured in the same rounds (median of the per-round ratios: the layers
alternate, so the ratio holds on a machine that other jobs share), and the bytes each layer saves for the backward
over BatchNorm2d's (torch.autograd.graph.saved_tensors_hooks). Methods (columns per norm):
    op        this package's layer on the default backend (native C++ kernels on the CPU, Triton on CUDA)
    torch     the same layer with NORMREPRO_NORM_BACKEND=torch (its primitives as torch ops)
    compiled  torch.compile of the norm's formula written as plain torch ops (what inductor makes of it)
The compiled formula is compiled once per norm, dtype and layout (dynamic shapes; L-inf and Top-k once per n, as
C(n) is a Python constant): on CUDA the default run compiles a few dozen times, minutes in all (``--methods
op,torch`` skips them). On CUDA each row also prints the bound: the time to move the bytes a fused forward+backward
must move (read x, write y; read x and dy, write dx: 5 tensors) at the GPU's memory bandwidth (measured with a
1 GiB copy).

The CPU figures use glibc's default allocator, as train.py runs (after a larger shape, fresh activation buffers
cost page faults); ``--keep-freed-memory`` raises glibc's trim/mmap thresholds first (the steadier figures).

    python scripts/bench_norms.py --device cpu --threads 1,2 --markdown docs/norms_bench.md
    python scripts/bench_norms.py --device cuda --dtypes float32,float16,bfloat16 --batches 128,256
    python scripts/bench_norms.py --device cpu --methods op,torch,compiled --shapes 2,3
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normrepro.norms import backend, build_norm, c_linf  # noqa: E402
from normrepro.norms import backends as norm_backends  # noqa: E402
from normrepro.utils.bench import bench_devices, keep_freed_memory, saved_bytes  # noqa: E402
from normrepro.utils.io import atomic_write_text  # noqa: E402

CHANNELS = [(64, 32), (128, 16), (256, 8), (512, 4)]  # ResNet-18 (CIFAR) stages: channels, spatial size
DEFAULT_NORMS = ["l2", "l1", "linf", "topk", "mean"]
METHODS = ("op", "torch", "compiled")
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def formula(x, weight, bias, name: str):
    """A norm's training forward written as plain torch ops (autograd backward): the ``compiled`` method's input."""
    c = x.shape[1]
    n = x.numel() // c
    mu = x.mean((0, 2, 3), keepdim=True)
    d = x - mu
    if name == "mean":
        return d + bias.view(1, -1, 1, 1)
    if name == "l1":
        s = math.sqrt(math.pi / 2) * d.abs().mean((0, 2, 3), keepdim=True) + 1e-5
    elif name in ("linf", "topk", "topk_ghost"):
        k = 1 if name == "linf" else 10
        top = d.abs().transpose(0, 1).reshape(c, -1).topk(k, dim=1).values.mean(1)
        s = (c_linf(n) * top + 1e-5).view(1, -1, 1, 1)
    else:  # l2
        s = (d.pow(2).mean((0, 2, 3), keepdim=True) + 1e-5).sqrt()
    return d / s * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


_COMPILED: dict = {}


class Formula(torch.nn.Module):
    """``formula`` as a layer with its own gamma and beta; ``compile_backend`` set: through one torch.compile of
    ``formula`` per backend and norm (dynamic shapes, so shapes and batch sizes reuse it)."""

    def __init__(self, name: str, channels: int, compile_backend: str | None = None):
        super().__init__()
        self.name = name
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.fn = formula
        if compile_backend is not None:
            key = (compile_backend, name)
            if key not in _COMPILED:
                _COMPILED[key] = torch.compile(formula, dynamic=True, backend=compile_backend)
            self.fn = _COMPILED[key]

    def forward(self, x):
        return self.fn(x, self.weight, self.bias, self.name)


def time_fb(module, x, g, iters: int, sync) -> float:
    """Seconds per training forward+backward (mean over ``iters`` back-to-back calls)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        torch.autograd.grad(module(x), [x], g)
    sync()
    return (time.perf_counter() - t0) / iters


class Timed:
    """One column: a module run under a norm backend ('op': the default one)."""

    def __init__(self, module, be: str | None):
        self.module, self.be = module, be

    def __call__(self, x):
        if self.be is None:
            return self.module(x)
        with backend(self.be):
            return self.module(x)


def columns(shape, norms, methods, device, dtype, compile_backend="inductor"):
    c = shape[1]
    cols = {"BatchNorm2d": Timed(torch.nn.BatchNorm2d(c).to(device), None)}
    for name in norms:
        for method in methods:
            if name == "l2" and method != "op":
                continue  # build_norm("l2") is torch's batch norm itself
            if method == "compiled":
                cols[f"{name}/{method}"] = Timed(Formula(name, c, compile_backend).to(device), None)
            else:
                cols[f"{name}/{method}"] = Timed(build_norm(name, c).to(device), "torch" if method == "torch" else None)
    return cols


def bench_case(shape, fmt, device, dtype, norms, methods, rounds, iters, warmup, compile_backend="inductor"):
    """{column: dict(ms, ratio, saved)} for one shape / layout / dtype."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    g = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=fmt)
    cols = columns(shape, norms, methods, device, dtype, compile_backend)
    for fn in cols.values():
        for _ in range(max(warmup, 1)):
            y = fn(x)
            torch.autograd.grad(y, [x], g)
        assert y.is_contiguous(memory_format=fmt), f"{fn.module} changed the layout"
    times = {k: [] for k in cols}
    for r in range(rounds):
        order = list(cols.items()) if r % 2 == 0 else list(cols.items())[::-1]
        for k, fn in order:
            times[k].append(time_fb(fn, x, g, iters, sync))
    base = times["BatchNorm2d"]
    bn_bytes = saved_bytes(cols["BatchNorm2d"], x)
    out = {}
    for k, fn in cols.items():
        out[k] = dict(ms=statistics.median(times[k]) * 1e3,
                      ratio=statistics.median(t / b for t, b in zip(times[k], base)),
                      saved=saved_bytes(fn, x) / bn_bytes if k.endswith("/op") or k == "BatchNorm2d" else None)
    return out


def memory_bandwidth(device) -> float:
    """Bytes/s of a device-to-device copy of 1 GiB (read + write), the best of 5."""
    a = torch.empty(2**28, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize(device)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / best


def bound_ms(shape, dtype, bandwidth: float) -> float:
    """Milliseconds to move 5 activation-sized tensors (fused forward + backward) at ``bandwidth`` bytes/s."""
    return 5 * math.prod(shape) * torch.empty(0, dtype=dtype).element_size() / bandwidth * 1e3


def op_backend(device) -> str:
    """The primitive module the 'op' method runs on ``device`` (float32), e.g. prims_native."""
    return norm_backends.primitives(torch.empty(1, device=device), torch.float32).__name__.rsplit(".", 1)[-1]


def title_of(device, threads, kept, bandwidth):
    if device.type == "cpu":
        alloc = "freed memory kept mapped (mallopt)" if kept else "default allocator"
        return (f"CPU ({platform.processor() or platform.machine()}), {threads} thread(s), torch {torch.__version__}, "
                f"op = {op_backend(device)}, {alloc}")
    name = torch.cuda.get_device_name(device)
    return (f"CUDA ({name}), torch {torch.__version__}, op = {op_backend(device)}, memory bandwidth "
            f"{bandwidth / 1e9:.0f} GB/s (1 GiB copy), bound = 5 tensors at that bandwidth")


def table_rows(device, dtypes, batches, shapes_idx, norms, methods, args, bandwidth):
    keys = ["BatchNorm2d"] + [f"{n}/{m}" for n in norms for m in methods if not (n == "l2" and m != "op")]
    head = ["shape", "layout", "dtype", "BatchNorm2d ms"] + (["bound ms"] if device.type == "cuda" else [])
    head += [f"{k} ms (×BN)" for k in keys[1:]] + [f"{n} saved ×BN" for n in norms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    print(lines[0] + "\n" + lines[1], flush=True)
    for batch in batches:
        for i in shapes_idx:
            c, hw = CHANNELS[i]
            shape = (batch, c, hw, hw)
            numel = math.prod(shape)
            iters = args.iters or (max(3, int(4e7 / numel)) if device.type == "cpu" else 20)
            for dname in dtypes:
                for lname, fmt in LAYOUTS.items():
                    r = bench_case(shape, fmt, device, DTYPES[dname], norms, methods, args.rounds, iters, args.warmup,
                                   args.compile_backend)
                    row = ["×".join(map(str, shape)), lname, dname, f"{r['BatchNorm2d']['ms']:.3f}"]
                    if device.type == "cuda":
                        row.append(f"{bound_ms(shape, DTYPES[dname], bandwidth):.3f}")
                    row += [f"{r[k]['ms']:.3f} ({r[k]['ratio']:.2f}×)" for k in keys[1:]]
                    row += [f"{r[f'{n}/op']['saved']:.2f}" for n in norms]
                    lines.append("| " + " | ".join(row) + " |")
                    print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="all: the CPU, and CUDA if present")
    p.add_argument("--norms", default=",".join(DEFAULT_NORMS), help="comma-separated norm names")
    p.add_argument("--methods", default=None, help=f"comma-separated of {','.join(METHODS)} "
                   "(default: op on the CPU, all three on CUDA)")
    p.add_argument("--threads", default="1", help="CPU: comma-separated torch.set_num_threads values, e.g. 1,2")
    p.add_argument("--dtypes", default=None, help="comma-separated of float32,float16,bfloat16 "
                   "(default: float32 on the CPU, all three on CUDA)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 128 CPU, 128,256 CUDA)")
    p.add_argument("--shapes", default="all", help="'all' or indices into the 4 ResNet-18 stages, e.g. 0,3")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians over them")
    p.add_argument("--iters", type=int, default=0, help="forward+backward per round (0: about 0.15 s per round)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default=None, choices=list(norm_backends.BACKENDS),
                   help="the 'op' method's backend (default: NORMREPRO_NORM_BACKEND or auto)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: keep freed buffers mapped (mallopt) instead of glibc's default trimming")
    p.add_argument("--compile", action="store_true", help="shorthand for --methods op,compiled")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled method")
    p.add_argument("--markdown", default=None, help="also write the table(s) to this Markdown file (atomically)")
    args = p.parse_args(argv)
    for limit in ("cache_size_limit", "recompile_limit"):  # one compile per norm, dtype and layout
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 1024)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.backend:
        norm_backends.set_backend(args.backend)
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    shapes_idx = range(len(CHANNELS)) if args.shapes == "all" else [int(i) for i in args.shapes.split(",")]
    devices = bench_devices(args.device)
    if devices is None:
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    md = []
    for device in devices:
        cuda = device.type == "cuda"
        methods = [m.strip() for m in (args.methods or ("op,compiled" if args.compile else
                                                        ",".join(METHODS) if cuda else "op")).split(",")]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            print(f"error: unknown --methods {','.join(bad)}; choose from {','.join(METHODS)}", file=sys.stderr)
            return 2
        dtypes = (args.dtypes or ("float32,float16,bfloat16" if cuda else "float32")).split(",")
        batches = [int(b) for b in (args.batches or ("128,256" if cuda else "128")).split(",")]
        bandwidth = memory_bandwidth(device) if cuda else 0.0
        for threads in ([1] if cuda else [int(t) for t in args.threads.split(",")]):
            torch.set_num_threads(threads)
            title = title_of(device, threads, kept, bandwidth)
            print(f"\n## {title}\n", flush=True)
            lines = table_rows(device, dtypes, batches, shapes_idx, norms, methods, args, bandwidth)
            md.append(f"### {title}\n\n" + "\n".join(lines) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, "\n".join(md))
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
