"""`make demo`: the main job on the embedded digits data, CPU, a few minutes.

Sweeps norm in {l2, l1, linf, topk} x 3 seeds (ResNet-20, 16x16 digits), two jobs in parallel through
Hydra's joblib launcher, aggregates the sweep into results/demo/, renders the accuracy curves to
results/demo/curves.png and prints the table.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "multirun" / "demo"
OUT = REPO / "results" / "demo"
EPOCHS = int(os.environ.get("DEMO_EPOCHS", "8"))


def main() -> None:
    """Run the sweep, aggregate it, plot the curves, print the table."""
    if SWEEP.exists():
        shutil.rmtree(SWEEP)
    cmd = [sys.executable, "train.py", "-m", "norm=l2,l1,linf,topk", "seed=0,1,2", "dataset=digits",
           "model=resnet20", f"train.epochs={EPOCHS}", "train.num_threads=1", "train.progress=false",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={SWEEP}"]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "normrepro.report", str(SWEEP), "--out", str(OUT / "table"),
                    "--table", "lp_bn_imagenet"], cwd=REPO, check=True)

    from normrepro import report, report_plots

    runs = report.collect_runs([SWEEP])
    report_plots.plot_curves(runs, OUT / "curves.png")
    print((OUT / "table.md").read_text())
    print(f"figure: {OUT / 'curves.png'}")


if __name__ == "__main__":
    main()
