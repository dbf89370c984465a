#!/usr/bin/env python
"""Benchmark the normalization layers against torch's nn.BatchNorm2d.

For the four ResNet-18 CIFAR activation shapes at batch 128, in NCHW and channels_last, prints the
time of one forward+backward of each norm (ms, median over rounds), its ratio to nn.BatchNorm2d
measured in the same rounds (median of the per-round ratios: the norms and BatchNorm2d alternate, so
the ratio is robust to a machine that other jobs share), and the bytes each layer saves for the
backward as a ratio to BatchNorm2d's (counted with torch.autograd.graph.saved_tensors_hooks).
Runs on the CPU (torch.set_num_threads(--threads), default 1) and, when a GPU is present, on CUDA.

    python scripts/bench_norms.py                       # CPU (+ CUDA if available)
    python scripts/bench_norms.py --device cpu --rounds 7 --markdown docs/norms_bench.md
    python scripts/bench_norms.py --backend torch       # the torch-ops path instead of the CPU kernels
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normrepro.norms import (  # noqa: E402
    _native,  # noqa: E402
    build_norm,
    set_backend,
)
from normrepro.utils.bench import bench_devices, keep_freed_memory, saved_bytes  # noqa: E402

SHAPES = [(128, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8), (128, 512, 4, 4)]
DEFAULT_NORMS = ["l2", "l1", "linf", "topk", "mean"]
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def time_fb(module, x, g, iters: int, sync) -> float:
    """Seconds per forward+backward (mean over ``iters`` back-to-back calls)."""
    t0 = time.perf_counter()
    for _ in range(iters):
        x.grad = None
        module(x).backward(g)
    sync()
    return (time.perf_counter() - t0) / iters


def bench_case(shape, fmt, device, norms, rounds, iters, warmup, compile_=False):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    g = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    mods = {"BatchNorm2d": torch.nn.BatchNorm2d(shape[1]).to(device)}
    for name in norms:
        mods[name] = build_norm(name, shape[1]).to(device)
    if compile_:  # whole-layer torch.compile (the norms then run their torch-ops path, fused by inductor)
        mods = {k: torch.compile(m) for k, m in mods.items()}
    for m in mods.values():
        m.train()
        for _ in range(warmup):
            x.grad = None
            m(x).backward(g)
        y = m(x)
        assert y.is_contiguous(memory_format=fmt), f"{m} changed the layout"
    sync()
    times = {k: [] for k in mods}
    for _ in range(rounds):
        for k, m in mods.items():
            times[k].append(time_fb(m, x, g, iters, sync))
    base = times["BatchNorm2d"]
    res = {}
    bn_bytes = saved_bytes(mods["BatchNorm2d"], x)
    for k in mods:
        ratio = statistics.median(t / b for t, b in zip(times[k], base))
        res[k] = dict(ms=statistics.median(times[k]) * 1e3, ratio=ratio,
                      saved=saved_bytes(mods[k], x) / bn_bytes, saved_mb=saved_bytes(mods[k], x) / 2**20)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    p.add_argument("--norms", default=",".join(DEFAULT_NORMS), help="comma-separated norm names")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on the CPU")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians over them")
    p.add_argument("--iters", type=int, default=0, help="forward+backward per round (0: about 0.15 s per round)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default="auto", choices=["auto", "native", "torch"])
    p.add_argument("--markdown", default=None, help="also write the table(s) to this Markdown file")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd layers (BatchNorm2d too)")
    p.add_argument("--shapes", default="all", help="'all' or indices into the 4 shapes, e.g. 0,3")
    p.add_argument("--no-keep-memory", action="store_true",
                   help="leave glibc's default trimming on (timings then include page faults, noisily)")
    args = p.parse_args(argv)
    kept = False if args.no_keep_memory else keep_freed_memory()

    torch.set_num_threads(args.threads)
    set_backend(args.backend)
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    devices = bench_devices(args.device)
    if devices is None:
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2

    md = []
    for device in devices:
        native = device.type == "cpu" and args.backend != "torch" and _native.lib() is not None
        if device.type == "cpu":
            what = f"CPU ({platform.processor() or platform.machine()}, {args.threads} thread(s))"
        else:
            what = f"CUDA ({torch.cuda.get_device_name(device)})"
        title = (f"{what}, torch {torch.__version__}, backend={args.backend}"
                 f"{' (native CPU kernels)' if native and not args.compile else ' (torch ops)'}"
                 f"{', torch.compile' if args.compile else ''}"
                 f"{', freed memory kept mapped' if kept and device.type == 'cpu' else ''}")
        head = ["shape", "layout", "BatchNorm2d ms"] + [f"{n} ms (×BN)" for n in norms] + \
               [f"{n} saved ×BN" for n in norms]
        print(f"\n## {title}\n")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        print(lines[0])
        print(lines[1])
        shapes = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
        for shape in shapes:
            numel = 1
            for s in shape:
                numel *= s
            iters = args.iters or max(3, int(4e7 / numel) if device.type == "cpu" else 50)
            for lname, fmt in LAYOUTS.items():
                r = bench_case(shape, fmt, device, norms, args.rounds, iters, args.warmup, args.compile)
                row = ["×".join(map(str, shape)), lname, f"{r['BatchNorm2d']['ms']:.2f}"]
                row += [f"{r[n]['ms']:.2f} ({r[n]['ratio']:.2f}×)" for n in norms]
                row += [f"{r[n]['saved']:.2f}" for n in norms]
                line = "| " + " | ".join(row) + " |"
                lines.append(line)
                print(line, flush=True)
        md.append(f"### {title}\n\n" + "\n".join(lines) + "\n")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md))
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
