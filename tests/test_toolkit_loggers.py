"""Issue 13, loggers: logger=csv and logger=tensorboard offline, W&B's run id kept across a resume, sweep names."""
import csv
import json
import re

import pytest
from omegaconf import OmegaConf

from normrepro import loggers
from normrepro.trainer import fit
from tests.helpers.config import TINY, compose_cfg
from tests.helpers.resume import crash_then_resume

RESUMABLE = TINY + ["optim.schedule.name=constant"]  # train.epochs may then grow on resume


def test_csv_logger_one_row_per_epoch_across_a_resume(tmp_path, monkeypatch):
    result = crash_then_resume(compose_cfg(RESUMABLE + ["logger=csv", "train.epochs=3"]), tmp_path, monkeypatch, 2)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["test_acc"]) for r in rows] == [r["test_acc"] for r in result["epochs"]]
    assert any(k.startswith("weight_norm/") for k in rows[0])  # the nested per-layer norms as columns


def test_tensorboard_logger_writes_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = crash_then_resume(compose_cfg(RESUMABLE + ["logger=tensorboard", "train.epochs=2"]), tmp_path,
                               monkeypatch, 1)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("test_acc")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["test_acc"] for r in result["epochs"]])
    assert "final/test_acc" in acc.Tags()["scalars"]


def test_tensorboard_missing_package_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from normrepro.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pip install 'normrepro\[tensorboard\]'"):
        loggers.build_logger(OmegaConf.create({"name": "tensorboard"}), {}, tmp_path)


def test_wandb_run_id_persists_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    fit(compose_cfg(RESUMABLE + ["logger=wandb", "train.epochs=1"]), tmp_path)
    run_id = (tmp_path / loggers.WANDB_ID_NAME).read_text().strip()
    result = fit(compose_cfg(RESUMABLE + ["logger=wandb", "train.epochs=2"]), tmp_path)  # resumes at epoch 1
    assert result["final"]["epochs_done"] == 2 and len(result["epochs"]) == 2
    assert (tmp_path / loggers.WANDB_ID_NAME).read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, wandb adding -1, -2, ... when both runs start within the same second
    same_id = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?")
    assert len(runs) >= 1 and all(same_id.fullmatch(r.name) for r in runs), [r.name for r in runs]


def test_wandb_multirun_job_named_by_overrides_grouped_by_sweep(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tests.helpers.config import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=wandb"], return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.mode = "MULTIRUN"
    cfg.hydra.job.override_dirname = "norm=l1,seed=1"
    cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    HydraConfig.instance().set_config(cfg)
    seen = {}

    class FakeRun:
        def define_metric(self, *args, **kwargs):
            pass

    def fake_init(**kwargs):
        seen.update(kwargs)
        return FakeRun()

    import wandb

    monkeypatch.setattr(wandb, "init", fake_init)
    try:
        loggers.build_logger(cfg.logger, {}, tmp_path / "sweep" / "3")
    finally:
        HydraConfig.instance().cfg = None
    assert seen["name"] == "norm=l1,seed=1" and seen["group"] == str(tmp_path / "sweep")
    assert seen["resume"] == "allow" and seen["id"] == (tmp_path / "sweep" / "3" / loggers.WANDB_ID_NAME).read_text(
    ).strip()
    json.dumps(seen["config"])  # the resolved config is plain data
