"""Pure-fp16 training on the embedded digits: L2 (torch's kernel and l2_lp, squares in fp16) vs L1 vs fp32 L2.

    python scripts/fp16_train.py                    # 5 epochs, seed 0, two input settings
    python scripts/fp16_train.py --epochs 2 --seeds 0 --out /tmp/fp16   # quick

Setting ``normalized``: inputs normalized as usual. Setting ``raw``: inputs are raw pixel values 0..255
(dataset.std=1/255), so the first layer's pre-normalization activations are ~255x larger (the large-|x - mu| regime
of docs/paper.md §1.4 that weight growth without weight decay produces over a long run). Everything else: experiment
fp16_digits (ResNet-20 at quarter width, no weight decay, norm.track_max_dev=true). Writes ``<out>/fp16_train.md``
(table + commands + machine), ``<out>/fp16_train.png`` (test accuracy and largest |x - mu| per epoch).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = {  # name: overrides
    "fp32 l2": ["precision=fp32", "norm=l2"],
    "fp16 l2 (torch kernel)": ["precision=fp16", "norm=l2"],
    "fp16 l2_lp (squares in fp16)": ["precision=fp16", "norm=l2_lp"],
    "fp16 l1": ["precision=fp16", "norm=l1"],
}
SETTINGS = {"normalized": [], "raw": ["dataset.mean=[0.0]", "dataset.std=[0.00392156862745098]"]}


def run(arm, setting, seed, epochs, out, extra=()) -> Path:
    """Train one (arm, input setting, seed) through train.py; returns its run dir."""
    run_dir = out / "runs" / setting / arm.split(" (")[0].replace(" ", "_") / f"seed{seed}"
    cmd = [sys.executable, "train.py", "experiment=fp16_digits", *ARMS[arm], *SETTINGS[setting], f"seed={seed}",
           f"train.epochs={epochs}", "train.progress=false", f"hydra.run.dir={run_dir}", *extra]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return run_dir


def summarize(metrics: dict) -> dict:
    """The table's columns of one run's metrics.json."""
    rows = metrics["epochs"]
    last = rows[-1] if rows else {}
    dev = last.get("max_abs_dev") or {}
    return {"status": metrics["status"], "epochs": len(rows), "test_acc": last.get("test_acc"),
            "train_loss": last.get("train_loss"), "skipped": sum(r.get("skipped_steps", 0) for r in rows),
            "max_dev": max(dev.values()) if dev else None, "first_dev": next(iter(dev.values()), None),
            "why": metrics["env"].get("diverged", "")}


def plot(results, path):
    """Test accuracy and the largest |x - mu| per epoch, one column per input setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from normrepro.utils.io import atomic_savefig

    fig, axes = plt.subplots(2, len(SETTINGS), figsize=(11, 7), squeeze=False)
    for j, setting in enumerate(SETTINGS):
        for arm in ARMS:
            for seed, m in results.get((setting, arm), {}).items():
                ep = [r["epoch"] for r in m["epochs"]]
                axes[0][j].plot(ep, [r["test_acc"] for r in m["epochs"]], marker="o", ms=3,
                                label=f"{arm} s{seed}")
                axes[1][j].plot(ep, [max((r.get("max_abs_dev") or {0: float("nan")}).values())
                                     for r in m["epochs"]], marker="o", ms=3, label=f"{arm} s{seed}")
        axes[0][j].set_title(f"{setting} inputs: test accuracy %")
        axes[1][j].set_title(f"{setting} inputs: largest |x - mu| (any layer)")
        axes[1][j].set_yscale("log")
        axes[1][j].axhline(255.9, color="k", ls=":", lw=1, label="fp16 square overflows (255.9)")
        for ax in axes[:, j]:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """Train every arm x setting x seed, then write the table and the figure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", default="0")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--out", default=str(REPO / "results"))
    p.add_argument("extra", nargs="*", help="overrides for every run (after --), e.g. train.num_threads=1")
    args = p.parse_args(argv)
    out = Path(args.out)
    settings = args.settings.split(",")
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        sys.exit(f"error: unknown setting {bad[0]!r}; choose from {', '.join(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for setting in settings:
        for arm in ARMS:
            for seed in seeds:
                run_dir = run(arm, setting, seed, args.epochs, out / "fp16_train", args.extra)
                results.setdefault((setting, arm), {})[seed] = json.loads((run_dir / "metrics.json").read_text())

    import torch

    from normrepro.utils.io import atomic_write_text

    env = next(iter(next(iter(results.values())).values()))["env"]
    lines = ["# Pure-fp16 training on the embedded digits: L2 vs L1 (issue 4)", "",
             f"Command: `python scripts/fp16_train.py --epochs {args.epochs} --seeds {args.seeds} "
             f"--settings {args.settings}" + (" -- " + " ".join(args.extra) if args.extra else "") + "`  ",
             f"Experiment `fp16_digits`: digits 16x16 (1437 train / 360 test), ResNet-20 width 4, batch 128, "
             f"{args.epochs} epochs, SGD lr 0.1 (x0.1 at 50 %/75 %), **no weight decay**, seeds {args.seeds}.  ",
             f"Hardware: {env.get('device')}, torch {torch.__version__}, {platform.python_version()}; "
             f"git {env.get('git_commit', '?')[:12]}.  ",
             "fp16 = model, inputs, activations and norm statistics in float16, dynamic loss scaling "
             "(`precision=fp16`). `l2 (torch kernel)`: torch's batch_norm on fp16 tensors, which on this CPU "
             "computes its statistics in fp32 internally; `l2_lp`: this package's L2 with the squares in fp16 "
             "(the paper's fp16 L2).  ",
             "`raw` inputs: pixel values 0..255 instead of normalized inputs, so the first layer's "
             "|x - mu| is ~255x larger.", "",
             "| inputs | arm | seed | status | epochs | final test acc % | final train loss | skipped steps | "
             "largest \\|x-mu\\| (last epoch, any layer) | first layer's |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, d=2: "" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    for (setting, arm), by_seed in results.items():
        for seed, m in by_seed.items():
            s = summarize(m)
            status = s["status"] + (f" ({s['why']})" if s["why"] else "")
            lines.append(f"| {setting} | {arm} | {seed} | {status} | {s['epochs']} | {fmt(s['test_acc'])} | "
                         f"{fmt(s['train_loss'], 3)} | {s['skipped']} | {fmt(s['max_dev'], 1)} | "
                         f"{fmt(s['first_dev'], 1)} |")
    import statistics

    lines += ["", "Mean ± sample std over seeds of the final test accuracy %:", "",
              "| inputs | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for setting in settings:
        cells = []
        for arm in ARMS:
            accs = [m["epochs"][-1]["test_acc"] for m in results[(setting, arm)].values() if m["epochs"]]
            sd = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
            cells.append(f"{statistics.fmean(accs):.1f}{sd} (n={len(accs)})" if accs else "")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy and largest deviation per epoch](fp16_train.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fp16_train.md", "\n".join(lines) + "\n")
    plot(results, out / "fp16_train.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
