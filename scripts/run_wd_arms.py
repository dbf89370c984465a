"""Run the four WD/LR arms of an experiment in order (the wd_on reference first), then aggregate.

    python scripts/run_wd_arms.py --experiment wd_lr_cifar10_vgg11 --seeds 0,1,2          # the paper's setting
    python scripts/run_wd_arms.py --experiment wd_lr_digits_vgg11 --seeds 0,1,2 --jobs 2  # CPU-sized version

Stage 1 trains ``experiment=<name> wd_arm=wd_on``, stage 2 the arms wd_off, lr_correction and norm_schedule (config
group ``wd_arm``; ``--prefix`` is the old spelling of ``--experiment``). Runs land in
``<experiment.root>/<arm>/seed<seed>`` (lr_correction and norm_schedule read ``wd_on/seed<seed>/weight_norms.pt``);
an interrupted experiment resumes from its checkpoints when run again. Writes ``<out>.md/.csv`` (report, paper's
numbers beside ours), ``<out>_acc.png`` and ``<out>_weight_norm.png`` (test accuracy and the scale-invariant
weights' norm per epoch). Extra arguments after ``--`` are passed to every run
(e.g. ``-- train.epochs=8``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("wd_on", "wd_off", "lr_correction", "norm_schedule")
STAGES = (ARMS[:1], ARMS[1:])  # the reference first; the other arms read it


def main(argv=None) -> int:
    """Parse the arguments, run the two stages, write the report and plots."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", "--prefix", dest="experiment", required=True,
                   help="a WD/LR experiment of normrepro/conf/experiment, e.g. wd_lr_digits_vgg11")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs (Hydra joblib launcher) within a stage")
    p.add_argument("--out", help="report path without suffix (default results/<experiment>)")
    p.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = p.parse_args(argv)
    if not (REPO / "normrepro" / "conf" / "experiment" / f"{args.experiment}.yaml").is_file():
        sys.exit(f"error: no experiment {args.experiment} in normrepro/conf/experiment")
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}", "train.num_threads=1"] \
        if args.jobs > 1 else []
    common = [f"experiment={args.experiment}", f"seed={args.seeds}", "train.progress=false", *launcher, *args.extra]
    for arms in STAGES:
        cmd = [sys.executable, "train.py", "-m", f"wd_arm={','.join(arms)}", *common]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)

    sys.path.insert(0, str(REPO))
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from normrepro.report import write_report
    from normrepro.report.plots import plot_curves

    with initialize_config_dir(config_dir=str(REPO / "normrepro" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.experiment}", *(
            o for o in args.extra if not o.lstrip("+~").startswith("hydra"))])
    root = REPO / OmegaConf.select(cfg, "experiment.root")
    out = Path(args.out) if args.out else REPO / "results" / args.experiment
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
