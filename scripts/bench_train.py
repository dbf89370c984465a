#!/usr/bin/env python
"""Benchmark the full training loop (``normrepro.trainer.fit``, i.e. train.py) against a minimal loop.

For each model, norm and eager/compiled: images/s of ``fit()`` on CIFAR-shaped synthetic data
(32x32x3, 10 classes; metrics rows ``train_images / train_seconds``, the first epoch excluded as a
warm-up) against a minimal hand-written loop (``logits = model(x); loss = F.cross_entropy(logits, y);
opt.zero_grad(); loss.backward(); opt.step()``) on the same model (``trainer.build_model_for``), the
same batches (taken once from the same in-memory loader, so the minimal loop has no data path: it is
the limit for that model here) and plain SGD with the same lr/momentum/weight decay. The two alternate:
``fit()`` is run with one epoch per round, and after each of its epochs (a logger hook) the minimal loop
of the same norm and the minimal loop with torch's BatchNorm (``norm=l2``, ``impl=torch``) run one
round each. Ratios are medians of the per-round ratios, so they hold on a shared machine.

Also the data path alone: images/s of the in-memory loader (uint8 on the device, batch crop + flip +
normalize) against torchvision's DataLoader with the standard transforms over PIL images
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize; num_workers 0 and 2).
On CUDA (``--device cuda`` or ``all`` with a GPU): the same, plus the time to the first epoch of a
CIFAR-sized synthetic set (50k images) for ResNet-18. CPU figures use glibc's default allocator, as train.py
runs; ``--keep-freed-memory`` keeps freed buffers mapped (mallopt) for steadier numbers.

    python scripts/bench_train.py --quick                      # resnet20, l2+l1, eager, a few steps
    python scripts/bench_train.py --models resnet20 --compile both --threads 1,2 --out bench.md
    python scripts/bench_train.py --models resnet18 --norms l1,l2 --steps 4 --rounds 3
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "torchinductor"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(REPO))

from normrepro import trainer  # noqa: E402
from normrepro.data import InMemoryLoader, build_data  # noqa: E402
from normrepro.data.sources import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from normrepro.precision import build_precision  # noqa: E402
from normrepro.utils.bench import bench_devices, keep_freed_memory  # noqa: E402
from normrepro.utils.io import atomic_write_text  # noqa: E402

MODELS = {"resnet20": "resnet20", "resnet18": "resnet18_cifar"}  # short name -> normrepro/conf/model
NORMS = ["l2", "l1", "linf", "topk"]
BN = "l2"  # normrepro/conf/norm/l2.yaml: impl=torch, i.e. torch's BatchNorm2d


def sync_fn(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def compose_cfg(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "normrepro" / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def make_cfg(model, norm, args, device, compile_, epochs, steps, num_train=None, max_steps=True):
    over = [f"model={MODELS[model]}", f"norm={norm}", "dataset=synthetic",
            f"dataset.num_train={num_train or steps * args.batch_size}", f"dataset.num_test={args.batch_size}",
            f"train.batch_size={args.batch_size}", f"train.eval_batch_size={args.batch_size}",
            f"train.epochs={epochs}", "train.progress=false", "train.checkpoint=false", "train.resume=false",
            f"train.compile={str(bool(compile_)).lower()}", f"device={device.type}", "logger=none"]
    if max_steps:
        over.append(f"train.max_steps_per_epoch={steps}")
    if device.type == "cpu":
        over.append(f"train.num_threads={args.threads}")
    return compose_cfg(over)


class MinimalLoop:
    """The hand-written loop on the model ``fit`` would build for ``cfg``; ``run(batches)`` returns seconds."""

    def __init__(self, cfg, device, compile_):
        trainer.seed_everything(int(cfg.seed), False)
        kw = {}  # the norms' statistics dtype that fit() takes from the precision config, when it does
        if "stats_dtype" in inspect.signature(trainer.build_model_for).parameters:
            kw["stats_dtype"] = getattr(build_precision(cfg.precision, device), "stats_dtype", None)
        self.model = trainer.build_model_for(cfg, 10, 3, **kw).to(device).train()
        o = cfg.optim
        self.opt = torch.optim.SGD(self.model.parameters(), lr=float(o.lr), momentum=float(o.momentum),
                                   weight_decay=float(o.weight_decay))
        self.step_model = torch.compile(self.model) if compile_ else self.model
        self.sync = sync_fn(device)

    def run(self, batches) -> float:
        self.sync()
        t0 = time.perf_counter()
        for x, y in batches:
            logits = self.step_model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sync()
        return time.perf_counter() - t0


def run_fit(cfg, hook):
    """``trainer.fit(cfg)`` in a temporary run dir with ``hook(row)`` after every epoch; returns the result."""
    with tempfile.TemporaryDirectory() as run_dir:
        return trainer.fit(cfg, run_dir, on_epoch=hook)


def bench_model(model, norms, compile_, args, device):
    """Rows {norm, fit_ips, min_ips, ratio, bn_ratio} for one model and eager/compiled."""
    steps, rounds = args.steps, args.rounds
    bn_cfg = make_cfg(model, BN, args, device, compile_, 1 + rounds, steps)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    data = build_data(bn_cfg.dataset, args.batch_size, args.batch_size, device, int(bn_cfg.seed))
    batches = [(x.clone(), y.clone()) for x, y in data.train][:steps]  # the batches fit() sees in epoch 1
    assert len(batches) == steps, "not enough training images for --steps"
    bn_loop = MinimalLoop(bn_cfg, device, compile_)
    t_bn0 = time.perf_counter()
    bn_loop.run(batches[:2])  # warm-up (compiles)
    bn_warm = time.perf_counter() - t_bn0
    rows = []
    for norm in norms:
        cfg = bn_cfg if norm == BN else make_cfg(model, norm, args, device, compile_, 1 + rounds, steps)
        loop = bn_loop if norm == BN else MinimalLoop(cfg, device, compile_)
        fit_t, min_t, bn_t = [], [], []
        t_start = time.perf_counter()

        def hook(row, loop=loop, fit_t=fit_t, min_t=min_t, bn_t=bn_t):  # called within this iteration
            if row["epoch"] == 1:  # fit()'s warm-up epoch: warm the minimal loops up too
                loop.run(batches[:2])
                return
            fit_t.append(row["train_seconds"] / row["train_images"])
            order = [(loop, min_t)] + ([] if loop is bn_loop else [(bn_loop, bn_t)])
            if len(fit_t) % 2 == 0:
                order.reverse()
            for lp, out in order:
                out.append(lp.run(batches) / (steps * args.batch_size))

        result = run_fit(cfg, hook)
        if result["status"] != "completed":
            print(f"warning: {model} {norm}: fit status {result['status']}", file=sys.stderr)
        bn_t_ = bn_t if bn_t else min_t
        rows.append(dict(
            model=model, norm=norm, compile=compile_, fit_ips=1 / statistics.median(fit_t),
            min_ips=1 / statistics.median(min_t),
            ratio=statistics.median(m / f for f, m in zip(fit_t, min_t)),
            bn_ratio=statistics.median(m / b for m, b in zip(min_t, bn_t_)),
            fit_bn_ratio=statistics.median(f / b for f, b in zip(fit_t, bn_t_)),
            seconds=time.perf_counter() - t_start + (bn_warm if norm == norms[0] else 0.0)))
        r = rows[-1]
        print(f"  {model} {norm} compile={int(compile_)}: train.py {r['fit_ips']:.1f} img/s, minimal "
              f"{r['min_ips']:.1f} img/s, ratio {r['ratio']:.3f}, step xBN {r['bn_ratio']:.3f} "
              f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- data path

class PILImages(torch.utils.data.Dataset):
    """As torchvision.datasets.CIFAR10: HWC uint8 numpy images, each made a PIL image and transformed."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_data(args, device):
    """{name: images/s} of the in-memory loader and torchvision DataLoader (workers 0 and 2), batch B."""
    import torchvision.transforms as T

    n, b = args.data_images, args.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    sync = sync_fn(device)
    mem = InMemoryLoader(x.to(device), y.to(device), b, CIFAR_MEAN, CIFAR_STD, shuffle=True, pad=4, flip=True,
                         drop_last=True)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = PILImages(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), tf)
    cuda = device.type == "cuda"
    loaders = {"in-memory": mem}
    for w in args.workers:
        loaders[f"torchvision DataLoader, {w} workers"] = torch.utils.data.DataLoader(
            ds, batch_size=b, shuffle=True, num_workers=w, drop_last=True, pin_memory=cuda,
            persistent_workers=w > 0)

    def epoch(name, ld, e):
        if hasattr(ld, "set_epoch"):
            ld.set_epoch(e)
        sync()
        t0, seen = time.perf_counter(), 0
        for xb, yb in ld:
            if cuda:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            seen += yb.numel()
        sync()
        return seen / (time.perf_counter() - t0)

    for name, ld in loaders.items():  # warm-up (worker start-up excluded: persistent workers)
        epoch(name, ld, 0)
    ips = {k: [] for k in loaders}
    for r in range(args.rounds):
        for name, ld in loaders.items():
            ips[name].append(epoch(name, ld, r + 1))
    return {k: statistics.median(v) for k, v in ips.items()}


def first_epoch(args, device, compile_):
    """Seconds from calling fit() to the end of its first epoch (data generation, model, compile, one epoch over
    --first-epoch-images CIFAR-shaped synthetic images, default 50k, and the test pass over a fifth of that),
    and that epoch's training images/s."""
    n = args.first_epoch_images
    cfg = make_cfg(args.first_epoch_model, "l1", args, device, compile_, 1, 0, num_train=n, max_steps=False)
    cfg.dataset.num_test = max(n // 5, args.batch_size)
    out = {}
    t0 = time.perf_counter()

    def hook(row):
        out.update(seconds=time.perf_counter() - t0, train_ips=row["train_images"] / row["train_seconds"],
                   epoch_seconds=row["seconds"])

    run_fit(cfg, hook)
    return out


# ---------------------------------------------------------------------------------------------- main

def describe(device, args, kept):
    if device.type == "cpu":
        return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPU, "
                f"{args.threads} thread(s)), torch {torch.__version__}"
                f"{', freed memory kept mapped' if kept else ''}")
    return f"CUDA ({torch.cuda.get_device_name(device)}), torch {torch.__version__}"


def table(rows):
    head = ["model", "norm", "mode", "train.py img/s", "minimal img/s", "train.py / minimal",
            "step × BatchNorm (minimal)", "train.py step × BatchNorm minimal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} | {'compiled' if r['compile'] else 'eager'} | "
                     f"{r['fit_ips']:.1f} | {r['min_ips']:.1f} | {r['ratio']:.3f} | {r['bn_ratio']:.3f} | "
                     f"{r['fit_bn_ratio']:.3f} |")
    return lines


def bench_device(device, args, models, norms, modes, skip_compiled, kept) -> str:
    """The Markdown section of one device (and CPU thread count): training loop, data path, first epoch."""
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    steps = args.steps or (6 if device.type == "cpu" else 50)
    dargs = argparse.Namespace(**{**vars(args), "steps": steps})
    title = describe(device, args, kept)
    print(f"\n## {title}\n", flush=True)
    section = [f"### {title}", ""]
    if not args.no_train:
        rows, skipped = [], []
        for compile_ in modes:
            for model in models:
                if compile_ and model in skip_compiled:
                    skipped.append(f"{model} compiled")
                    continue
                rows += bench_model(model, norms, compile_, dargs, device)
        lines = table(rows)
        note = (f"Batch {args.batch_size}, {steps} timed steps per round, {args.rounds} alternating rounds "
                f"(medians; ratios are medians of per-round ratios), first fit() epoch excluded."
                + (f" Skipped: {', '.join(skipped)}." if skipped else ""))
        print(note + "\n\n" + "\n".join(lines), flush=True)
        section += [note, ""] + lines + [""]
    if args.data:
        ips = bench_data(dargs, device)
        base = ips["in-memory"]
        lines = [f"| data path (batch {args.batch_size}) | images/s | in-memory ÷ this |", "|---|---|---|"]
        lines += [f"| {k} | {v:,.0f} | {base / v:.1f}× |" for k, v in ips.items()]
        print("\n" + "\n".join(lines), flush=True)
        section += lines + [""]
    if args.first_epoch == "1" or (args.first_epoch == "auto" and device.type == "cuda"):
        for compile_ in modes:
            fe = first_epoch(dargs, device, compile_)
            line = (f"Time to first epoch, {args.first_epoch_model}, L1, {args.first_epoch_images:,} synthetic "
                    f"32×32 images, batch {args.batch_size}, {'compiled' if compile_ else 'eager'}: "
                    f"{fe['seconds']:.1f} s "
                    f"(epoch incl. test pass {fe['epoch_seconds']:.1f} s, train {fe['train_ips']:,.0f} img/s)")
            print("\n" + line, flush=True)
            section += [line, ""]
    return "\n".join(section)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet18", help=f"comma-separated, of {','.join(MODELS)}")
    p.add_argument("--norms", default=",".join(NORMS), help="comma-separated norm config names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (0: 6 on CPU, 50 on CUDA)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (fit epochs after the warm-up)")
    p.add_argument("--compile", default="both", choices=["0", "1", "both"])
    p.add_argument("--skip-compiled", default="",
                   help="comma-separated models not to compile (e.g. resnet18: minutes of compiling on a CPU)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    p.add_argument("--threads", default="1", help="CPU: comma-separated torch.set_num_threads values, e.g. 1,2")
    p.add_argument("--data", type=int, default=1, choices=[0, 1], help="also benchmark the data path alone")
    p.add_argument("--data-images", type=int, default=5120)
    p.add_argument("--workers", default="0,2", help="torchvision DataLoader num_workers to time")
    p.add_argument("--first-epoch", default="auto", choices=["auto", "0", "1"],
                   help="time to first epoch of ResNet-18 on 50k synthetic images (auto: on CUDA only)")
    p.add_argument("--first-epoch-images", type=int, default=50000, help="training images (test: a fifth)")
    p.add_argument("--first-epoch-model", default="resnet18", choices=list(MODELS), help="the first epoch's model")
    p.add_argument("--no-train", action="store_true", help="only the data path (and first epoch)")
    p.add_argument("--quick", action="store_true", help="resnet20, l2+l1, eager, 3 steps, 2 rounds")
    p.add_argument("--out", default=None, help="also write the Markdown tables to this file (atomically)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="keep freed buffers mapped (mallopt) instead of glibc's default trimming, as train.py runs")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.norms, args.compile, args.rounds = "resnet20", "l2,l1", "0", 2
        args.steps, args.data_images = args.steps or 3, 2560
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    norms = [BN] + [n for n in norms if n != BN] if BN in norms else norms  # BN first: its row is the baseline
    modes = {"0": [False], "1": [True], "both": [False, True]}[args.compile]
    skip_compiled = {m.strip() for m in args.skip_compiled.split(",") if m.strip()}
    kept = keep_freed_memory() if args.keep_freed_memory else False
    logging.getLogger("normrepro").setLevel(logging.WARNING)

    devices = bench_devices(args.device)
    if devices is None:
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2

    md = []
    thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    for device in devices:
        for threads in (thread_counts if device.type == "cpu" else [thread_counts[0]]):
            md.append(bench_device(device, argparse.Namespace(**{**vars(args), "threads": threads}), models, norms,
                                   modes, skip_compiled, kept))
    if args.out:
        atomic_write_text(args.out, "\n".join(md))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
