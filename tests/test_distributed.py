"""torchrun + DDP on the CPU (gloo): 2 processes with synchronized norms equal 1 process on the whole batch."""
import json
import os
import subprocess
import sys

import pytest

from normrepro.errors import ConfigError
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg

RUN = TINY + ["train.epochs=2", "train.num_threads=1", "optim.schedule.name=constant", "deterministic=true"]


def _torchrun(args, tmp_path, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.parametrize("norm", ["l1", pytest.param("topk", marks=pytest.mark.slow)])
def test_torchrun_two_processes_match_one(tmp_path, norm):
    over = RUN + [f"norm={norm}"]
    single = fit(compose_cfg(over), tmp_path / "single")
    proc = _torchrun([*over, "train.sync_norms=true", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["status"] == "completed" and ddp["env"]["world_size"] == 2
    for a, b in zip(single["epochs"], ddp["epochs"]):
        assert b["train_images"] == a["train_images"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.3)  # eval gathered over both ranks
    assert (tmp_path / "ddp" / "last.ckpt").exists()
    # resume: a third epoch continues from rank 0's checkpoint on both ranks
    proc = _torchrun([*over, "train.sync_norms=true", "train.epochs=3", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert [r["epoch"] for r in ddp["epochs"]] == [1, 2, 3]


def test_torchrun_needs_an_explicit_run_dir(tmp_path):
    proc = _torchrun(TINY, tmp_path)
    assert proc.returncode != 0 and "hydra.run.dir" in proc.stderr


def test_batch_not_divisible_by_world_size(tmp_path):
    proc = _torchrun(TINY + ["train.batch_size=63", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0 and "divisible by the world size 2" in proc.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_sync_without_process_group_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="needs a process group"):
        fit(compose_cfg(TINY + ["train.sync_norms=true"]), tmp_path)


def test_missing_rendezvous_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        fit(compose_cfg(TINY), tmp_path)


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    """hydra/launcher=local: the submitit path (as on SLURM) on this machine, for real."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=local", "seed=0,1", *TINY,
                           "train.num_threads=1", f"hydra.sweep.dir={sweep}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert list(sweep.glob(".submitit/*/*_result.pkl")), "submitit did not run the jobs"


def test_slurm_launcher_config_composes():
    """hydra/launcher=slurm resolves to the submitit SLURM launcher with requeue on timeout/preemption."""
    proc = subprocess.run([sys.executable, "train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "--cfg", "hydra", "--package", "hydra.launcher"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "max_num_timeout: 5" in proc.stdout
