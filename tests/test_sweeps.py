"""Experiment configs (with each WD/LR arm) run one step at tiny size; wandb logs offline; joblib runs sweep jobs
in parallel."""
import json
import subprocess
import sys

import pytest

from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg, group_options
from tests.helpers.data import write_cifar, write_imagenet

EXPERIMENTS = [o.split("=", 1)[1] for o in group_options("experiment")]
ARMS = [o.split("=", 1)[1] for o in group_options("wd_arm")]
# every experiment; the WD/LR ones (those selecting a wd_arm) with each arm
COMBINATIONS = [(e, arm) for e in EXPERIMENTS for arm in
                (ARMS if compose_cfg([f"experiment={e}"]).get("experiment", {}).get("arm") else [None])]


def tiny_model_overrides(model_name):
    if model_name.startswith("vgg"):
        return ["model.width_mult=0.0625"]
    if model_name == "wrn":
        return ["model.depth=10", "model.widen_factor=1", "model.width=4"]
    if model_name in ("resnet18", "resnet50"):
        return []
    return ["model.width=4"]


def tiny_data(cfg, tmp_path):
    name = cfg.dataset.name
    if name in ("cifar10", "cifar100"):
        write_cifar(tmp_path, name, 8, 8)
        return [f"dataset.root={tmp_path}"]
    if name == "imagenet":
        write_imagenet(tmp_path, n_train=4, n_val=4, classes=("a", "b"), size=(36, 36))
        return [f"dataset.root={tmp_path}", "dataset.image_size=32", "dataset.num_workers=0"]
    return ["dataset.image_size=8"] if name == "digits" else []


@pytest.mark.parametrize("experiment, arm", COMBINATIONS, ids=lambda v: v or "-")
def test_experiment_runs_one_step(experiment, arm, tmp_path):
    chosen = [f"experiment={experiment}"] + ([f"wd_arm={arm}"] if arm else [])
    cfg = compose_cfg(chosen)
    assert cfg.experiment.name == experiment and cfg.experiment.get("arm") == arm
    over = [*chosen, "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=4",
            "train.eval_batch_size=64", "train.progress=false", "train.checkpoint=false",
            *tiny_model_overrides(cfg.model.name), *tiny_data(cfg, tmp_path / "data")]
    cfg = compose_cfg(over)
    if cfg.optim.get("reference"):  # lr_correction / norm_schedule: train the wd_on reference first
        ref = tmp_path / "reference"
        fit(compose_cfg(over + ["optim.mode=standard", "optim.reference=null", "optim.wd_policy=wd_on",
                                "train.checkpoint=true"]), ref)
        cfg = compose_cfg(over + [f"optim.reference={ref}"])
    result = fit(cfg, tmp_path / "run")
    assert result["status"] == "completed" and result["final"]["epochs_done"] == 1


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = fit(compose_cfg(TINY + ["logger=wandb", "train.epochs=2"]), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert result["status"] == "completed" and len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no offline run log written"


def test_joblib_launcher_runs_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                           "seed=0,1", *TINY, "train.num_threads=1", f"hydra.sweep.dir={sweep}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = sorted(sweep.glob("*/metrics.json"))
    assert len(metrics) == 2
    assert sorted(json.loads(m.read_text())["seed"] for m in metrics) == [0, 1]
    launcher = (sweep / "multirun.yaml").read_text()
    assert "JoblibLauncher" in launcher and "n_jobs: 2" in launcher
