"""`make demo`: the headline in a few CPU minutes, printed and saved under results/demo/.

1. Lp batch norm on mnist5k (real MNIST digits, 32x32): experiment ``demo_lp_mnist5k`` (L2, L1, Top-k, L-inf BN,
   ResNet-20 width 8, 4 epochs, 2 seeds), two runs at a time through Hydra's joblib launcher; its table with
   95 % CIs and each norm's difference from L2 (``table.md``/``.csv``) and figures (``error.png``: final error,
   log axis; ``diff.png``: difference from L2 with its CI; ``curves.png``; ``vs_paper.png``).
2. The fp16 probe: each norm's float16 statistics against float64 over pre-norm scales (``fp16_probe.md/.csv/.png``).

    python scripts/demo.py                                   # what `make demo` runs
    python scripts/demo.py --out /tmp/demo --epochs 1 --seeds 0 --max-steps 2 --probe-shape 16,8,4,4   # smoke
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXPERIMENT = "demo_lp_mnist5k"


def run_sweep(sweep: Path, args: argparse.Namespace) -> None:
    """The Lp sweep of the demo experiment into ``sweep`` (a fresh one each time), two runs at a time."""
    if sweep.exists():
        shutil.rmtree(sweep)
    cmd = [sys.executable, "train.py", "-m", f"experiment={EXPERIMENT}", "train.num_threads=1", "train.progress=false",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    cmd += [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    cmd += [f"seed={args.seeds}"] if args.seeds else []
    cmd += [f"train.max_steps_per_epoch={args.max_steps}"] if args.max_steps else []
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def lp_table(sweep: Path, out: Path) -> list[str]:
    """Aggregate the sweep into ``out``/table.{md,csv} and the figures; the lines to print."""
    from normrepro.report import plots, write_report
    from normrepro.report.summary import ordering_verdict

    rep = write_report([sweep], out / "table", title="make demo: Lp batch norm on mnist5k", roots=[out.parent])
    for kind, draw in (("error", plots.plot_final_error), ("diff", plots.plot_diff), ("curves", plots.plot_curves)):
        draw(rep.groups, out / f"{kind}.png", title=f"mnist5k, ResNet-20: {kind}")
    plots.plot_vs_paper([("ours: mnist5k", rep.groups)], out / "vs_paper.png")
    text = rep.md.read_text(encoding="utf-8")
    results = text.split("## Results", 1)[1].split("## Paper cells used", 1)[0].strip()
    return [text.split("\n## What these numbers are")[0], "", results, "",
            f"ordering as the paper (each norm against L2, ours and the paper's)? {ordering_verdict(rep.groups)}"]


def fp16_probe(out: Path, shape: str | None) -> list[str]:
    """The fp16 probe into ``out``/fp16_probe.*; its summary lines."""
    where = out.resolve()
    where = where.relative_to(REPO) if where.is_relative_to(REPO) else where  # no machine path in the probe's table
    cmd = [sys.executable, "scripts/fp16_probe.py", "--out-dir", str(where), "--no-progress"]
    cmd += ["--shape", shape] if shape else []
    proc = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return [line for line in proc.stdout.strip().splitlines() if line.startswith("- ")]


def main(argv=None) -> int:
    """Run both parts, print the headline and the files written."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "results" / "demo"), help="output folder (default results/demo)")
    p.add_argument("--epochs", type=int, help="override the experiment's epochs")
    p.add_argument("--seeds", help="override the experiment's seeds, e.g. 0")
    p.add_argument("--max-steps", type=int, help="train.max_steps_per_epoch (smoke tests)")
    p.add_argument("--probe-shape", help="fp16 probe activation shape N,C,H,W (default the probe's)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    sweep = out / "sweep" if out != (REPO / "results" / "demo").resolve() else REPO / "multirun" / "demo"
    run_sweep(sweep, args)
    lines = lp_table(sweep, out) + ["", "fp16 probe (normrepro/experiments/fp16_probe.py):",
                                    *fp16_probe(out, args.probe_shape)]
    print("\n".join(lines))
    written = sorted(f.name for f in out.iterdir() if f.is_file())
    print(f"\nwrote into {out.name}/: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
