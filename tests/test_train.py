"""The trainer end to end: configs compose, the digits run learns, resume is exact, bad input is one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from normrepro.errors import ConfigError
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg
from tests.helpers.resume import crash_after


def test_digits_run_learns(tmp_path):
    """The issue's smoke command, as a subprocess, CPU, 2 epochs: clearly above chance (10 %)."""
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "train.py", "dataset=digits", "model=resnet20", "norm=l2",
                           "train.epochs=2", f"hydra.run.dir={run_dir}", "train.progress=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and len(m["epochs"]) == 2
    assert m["final"]["test_acc"] > 30.0, m["final"]  # chance is 10 %; seeds give 43-60 % after 2 epochs
    assert {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(m["epochs"][0])
    assert {"git_commit", "torch", "device", "precision"} <= set(m["env"])
    assert (run_dir / "last.ckpt").exists() and (run_dir / "config.yaml").exists()
    assert "norm=l2" in m["overrides"]


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    over = TINY + ["train.epochs=3", "train.max_steps_per_epoch=3", "optim.schedule.milestones=[1,2]",
                   "model.dropout=0.1", "model=wrn", "model.depth=10", "model.widen_factor=1", "model.width=4"]
    cfg = compose_cfg(over)
    full = fit(cfg, tmp_path / "full")
    undo = crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed")
    undo()
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["final"]["epochs_done"] == 2
    resumed = fit(cfg, tmp_path / "resumed")
    keys = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in resumed["epochs"]] == [[r[k] for k in keys] for r in full["epochs"]]
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", "train.epochs must be an integer >= 0, got -1"),
    ("model.name=resnet7", "unknown model 'resnet7'"),
    ("dataset.name=mnist", "unknown dataset 'mnist'"),
    ("norm.name=l3", "unknown norm 'l3'"),
    ("optim.wd_policy=some", "unknown optim.wd_policy 'some'"),
    ("device=tpu", "unknown device 'tpu'"),
])
def test_bad_values_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        fit(compose_cfg(TINY + [override]), tmp_path)
    assert not (tmp_path / "last.ckpt").exists() and not (tmp_path / "metrics.json").exists()


def test_missing_cifar_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        fit(compose_cfg(TINY + ["dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}"]), tmp_path / "r")


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt checkpoint"):
        fit(compose_cfg(TINY), tmp_path)


def run_cli(args, tmp_path):
    return subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path}/run"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def test_cli_bad_input_is_one_line(tmp_path):
    proc = run_cli(TINY + ["train.epochs=-1"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs must be an integer >= 0, got -1"
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cli_unknown_group_option_names_choices(tmp_path):
    proc = run_cli(["norm=l3"], tmp_path)
    assert proc.returncode != 0
    assert "norm/l3" in proc.stderr and "l1" in proc.stderr and "Traceback" not in proc.stderr
