"""Precisions: each trains two steps on the CPU; the loss scalers' skip path; fp32 master weights."""
import json

import pytest
import torch

from normrepro.errors import ConfigError
from normrepro.precision import (
    PRECISIONS,
    DynamicLossScaler,
    _GradScalerStats,
    build_precision,
    resolve_stats_dtype,
    scaler_stats,
)
from normrepro.trainer import fit
from tests.helpers.config import TINY, compose_cfg

CASES = [["precision=fp32"], ["precision=amp"], ["precision=bf16"], ["precision=fp16"],
         ["precision=fp16", "precision.master_weights=true", "norm=l1"], ["precision=bf16_pure", "norm=topk"],
         ["precision=fp16", "norm=l2", "norm.impl=lp"]]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(v.split("=")[1] for v in o))
def test_precision_trains_two_steps(tmp_path, overrides):
    cfg = compose_cfg(TINY + overrides)
    out = fit(cfg, tmp_path)
    assert out["status"] == "completed"
    row = out["epochs"][0]
    assert row["train_images"] == 128
    if cfg.precision.name in ("amp", "fp16"):  # loss scaling: each skipped step halved the initial 2^16
        assert 0 <= row["skipped_steps"] <= 2 and row["loss_scale"] == 2.0 ** (16 - row["skipped_steps"])
    else:  # no loss scaler: nothing is ever skipped
        assert (row["skipped_steps"], row["loss_scale"]) == (0, None)
    env = json.loads((tmp_path / "metrics.json").read_text())["env"]
    assert env["precision"] == cfg.precision.name
    expected = {"fp32": ("float32", "input (float32)"), "amp": ("float32", "float32"), "bf16": ("float32", "float32"),
                "fp16": ("float16", "input (float16)"), "bf16_pure": ("bfloat16", "input (bfloat16)")}
    model_dtype, stats_dtype = expected[cfg.precision.name]
    if cfg.norm.name == "l2" and cfg.norm.impl == "torch" and model_dtype != "float32":
        stats_dtype = "float32 inside torch's batch_norm (norm=l2_lp computes them in the input dtype)"
    assert (env["model_dtype"], env["stats_dtype"]) == (model_dtype, stats_dtype)


def test_every_precision_has_a_config():
    for name in PRECISIONS:
        assert compose_cfg([f"precision={name}"]).precision.name == name


def test_amp_norm_statistics_dtype_is_explicit(tmp_path):
    """Under amp every norm gets the same explicit stats dtype (float32), recorded in metrics.json."""
    from normrepro.trainer import build_model_for

    for norm in ("l2", "l1", "topk"):
        cfg = compose_cfg(TINY + ["precision=amp", f"norm={norm}"])
        model = build_model_for(cfg, 10, 1)
        dtypes = {m.stats_dtype for m in model.modules() if getattr(m, "is_norm_layer", False)}
        assert dtypes == {torch.float32}, (norm, dtypes)


def _tiny_step(scaler, model, opt, poison=False):
    loss = model(torch.ones(2, 3, dtype=next(model.parameters()).dtype)).float().sum()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if poison:
        next(model.parameters()).grad[0, 0] = float("inf")
    stepped = scaler.step(opt)
    scaler.update()
    return stepped


def test_dynamic_loss_scaler_skips_inf_steps_and_backs_off():
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    before = [p.detach().clone() for p in model.parameters()]
    assert _tiny_step(scaler, model, opt, poison=True) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "a skipped step changed weights"
    assert scaler.get_scale() == 512.0 and scaler_stats(scaler)["skipped_steps"] == 1
    assert _tiny_step(scaler, model, opt) and _tiny_step(scaler, model, opt)
    assert scaler.get_scale() == 1024.0, "two good steps with growth_interval=2 double the scale"
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_grad_scaler_skip_path_is_counted():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = _GradScalerStats("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    _tiny_step(scaler, model, opt, poison=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 512.0 and scaler_stats(scaler)["skipped_steps"] == 1
    state = scaler.state_dict()
    other = _GradScalerStats("cpu", init_scale=1.0)
    other.load_state_dict(state)
    assert other.get_scale() == 512.0 and other.skipped_steps == 1


def test_master_weights_hold_fp32_and_update_the_fp16_model():
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = DynamicLossScaler(init_scale=8.0)
    scaler.attach_master_weights(opt)
    masters = [p for g in opt.param_groups for p in g["params"]]
    assert all(m.dtype == torch.float32 for m in masters)
    for _ in range(3):
        assert _tiny_step(scaler, model, opt)
    for p, m in zip(model.parameters(), masters):
        assert p.dtype == torch.float16 and torch.equal(p, m.half())
    # a step smaller than fp16's resolution still moves the master
    assert any(not torch.equal(m, m.half().float()) for m in masters)


def test_fp16_resume_restores_master_weights(tmp_path):
    common = TINY + ["precision=fp16", "precision.master_weights=true", "norm=l1", "optim.schedule.name=constant"]
    cfg = compose_cfg(common + ["train.epochs=2"])
    full = fit(cfg, tmp_path / "full")
    fit(compose_cfg(common + ["train.epochs=1"]), tmp_path / "resumed")  # "stopped" after epoch 1
    resumed = fit(cfg, tmp_path / "resumed")
    assert resumed["epochs"][-1]["test_acc"] == full["epochs"][-1]["test_acc"]
    assert resumed["epochs"][-1]["train_loss"] == full["epochs"][-1]["train_loss"]


def test_half_unsupported_is_a_clear_error(monkeypatch):
    def broken(self, x):
        raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')

    monkeypatch.setattr(torch.nn.Conv2d, "forward", broken)
    cfg = compose_cfg(["precision=fp16"])
    with pytest.raises(ConfigError, match="precision=fp16 needs torch.float16 convolutions"):
        build_precision(cfg.precision, torch.device("cpu"))


def test_bad_stats_dtype_names_choices(tmp_path):
    for key in ("precision.stats_dtype", "norm.stats_dtype"):
        cfg = compose_cfg(TINY + ["precision=amp", f"{key}=float8"])
        with pytest.raises(ConfigError, match=f"{key}.*float8.*float32"):
            resolve_stats_dtype(cfg.norm, cfg.precision)
        with pytest.raises(ConfigError, match=f"{key}.*float8.*float32"):
            fit(cfg, tmp_path)
        assert not (tmp_path / "metrics.json").exists()


def test_skipped_steps_are_logged(tmp_path):
    """A loss scale too large for fp16 makes the first steps overflow: they are skipped, counted, and the
    run goes on (the scale backs off)."""
    out = fit(compose_cfg(TINY + ["precision=fp16", "precision.init_scale=1e30", "train.max_steps_per_epoch=4"]),
              tmp_path)
    row = out["epochs"][0]
    assert out["status"] == "completed"
    assert row["skipped_steps"] >= 1 and row["loss_scale"] < 1e30
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"][0]["skipped_steps"] == row["skipped_steps"]


def test_collapsed_loss_scale_ends_as_diverged(tmp_path):
    out = fit(compose_cfg(TINY + ["precision=fp16", "precision.init_scale=1e-6", "train.epochs=3"]), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert out["status"] == saved["status"] == "diverged"
    assert "loss scale collapsed" in saved["env"]["diverged"] and saved["final"]["epochs_done"] == 1


def test_exploding_fp32_run_ends_as_diverged(tmp_path):
    out = fit(compose_cfg(TINY + ["norm=none", "optim.lr=1e20", "train.epochs=3"]), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert out["status"] == saved["status"] == "diverged"
    assert saved["final"]["epochs_done"] == 1 and saved["env"]["diverged"]
