"""Run the four WD/LR arms of an experiment family in order (the wd_on reference first), then aggregate.

    python scripts/run_wd_arms.py --prefix wd_lr_cifar10_vgg11 --seeds 0,1,2          # the paper's setting
    python scripts/run_wd_arms.py --prefix wd_lr_digits_vgg11 --seeds 0,1,2 --jobs 2  # CPU-sized version

Experiments ``<prefix>_{wd_on,wd_off,lr_correction,norm_schedule}`` must exist in normrepro/conf/experiment. Runs
land in ``<experiment.root>/<arm>/seed<seed>`` (lr_correction and norm_schedule read
``wd_on/seed<seed>/weight_norms.pt``); an interrupted family resumes from its checkpoints when run again. Writes
``<out>.md/.csv`` (report, paper's numbers beside ours) and ``<out>_acc.png`` and ``<out>_weight_norm.png``
(test accuracy and the scale-invariant weights' norm per epoch). Extra arguments after ``--`` are passed to every run
(e.g. ``-- train.epochs=8``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("wd_on", "wd_off", "lr_correction", "norm_schedule")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", required=True, help="experiment family, e.g. wd_lr_digits_vgg11")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs (Hydra joblib launcher) within a stage")
    p.add_argument("--out", help="report path without suffix (default results/<prefix>)")
    p.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = p.parse_args(argv)
    experiments = REPO / "normrepro" / "conf" / "experiment"
    missing = [a for a in ARMS if not (experiments / f"{args.prefix}_{a}.yaml").is_file()]
    if missing:
        sys.exit(f"error: no experiment {args.prefix}_{missing[0]} in normrepro/conf/experiment "
                 f"(expected {', '.join(args.prefix + '_' + a for a in ARMS)})")
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}", "train.num_threads=1"] \
        if args.jobs > 1 else []
    common = [f"seed={args.seeds}", "train.progress=false", *launcher, *args.extra]
    for stage in ([f"experiment={args.prefix}_{arm}"] for arm in ARMS):  # wd_on (the reference) first
        cmd = [sys.executable, "train.py", "-m", *stage, *common]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)

    sys.path.insert(0, str(REPO))
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from normrepro.report import write_report
    from normrepro.report.plots import plot_curves

    with initialize_config_dir(config_dir=str(REPO / "normrepro" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.prefix}_wd_on", *(
            o for o in args.extra if not o.lstrip("+~").startswith("hydra"))])
    root = REPO / OmegaConf.select(cfg, "experiment.root")
    out = Path(args.out) if args.out else REPO / "results" / args.prefix
    dirs = [str(d) for d in sorted(root.glob("*/seed*"))]
    groups = write_report(dirs, out, table=OmegaConf.select(cfg, "experiment.table")).groups
    plot_curves(groups, out.with_name(out.name + "_acc.png"), key="test_acc", logy=False,
                title=f"{out.name}: test accuracy per epoch")
    plot_curves(groups, out.with_name(out.name + "_weight_norm.png"), key="si_weight_norm", logy=True,
                title=f"{out.name}: norm of the scale-invariant weights per epoch")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
