"""Bounded weight norm (issue 5, docs/paper.md §1.5): BWN, plain WN and BWN with bounded gains on conv layers."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normrepro.errors import ConfigError
from normrepro.models import build_model
from normrepro.models.weight_norm import (
    KINDS,
    BoundedGainWeightNorm,
    BoundedWeightNorm,
    apply_weight_norm,
    conv_layers,
    weight_norm_summary,
)
from normrepro.norms import norm_factory
from normrepro.optim.param_groups import param_groups
from normrepro.trainer import fit
from tests.helpers.config import TINY, compose_cfg


def tiny(seed=0, norm="mean"):
    torch.manual_seed(seed)
    return build_model("resnet20", 10, norm_factory(norm), in_channels=1, width=4)


def channel_norms(w):
    return w.flatten(1).norm(dim=1)


def train_steps(model, steps=5, lr=1.0, wd=1e-2, policy="all", seed=1):
    opt = torch.optim.SGD(param_groups(model, wd, policy), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_bwn_every_channel_norm_is_rho_and_rho_is_the_mean_initial_norm():
    model = tiny()
    before = {n: c.weight.detach().clone() for n, c in conv_layers(model)}
    apply_weight_norm(model, "bwn")
    for name, conv in conv_layers(model):
        p = conv.parametrizations.weight[0]
        assert isinstance(p, BoundedWeightNorm)
        rho = float(p.rho)
        assert rho == pytest.approx(float(channel_norms(before[name]).mean()), rel=1e-6)
        w = conv.weight
        torch.testing.assert_close(channel_norms(w), torch.full((w.shape[0],), rho), rtol=1e-5, atol=0)
        # each channel keeps its direction: w_c is parallel to the initial w_c
        cos = nn.functional.cosine_similarity(w.flatten(1), before[name].flatten(1), dim=1)
        torch.testing.assert_close(cos, torch.ones_like(cos))
    assert not parametrize.is_parametrized(model.fc)
    # rho is a buffer (not learned) and lives in the state_dict
    assert not any(n.endswith("rho") for n, _ in model.named_parameters())
    assert any(k.endswith("parametrizations.weight.0.rho") for k in model.state_dict())


def test_bwn_norm_stays_at_rho_after_sgd_with_large_lr_and_weight_decay():
    model = apply_weight_norm(tiny(), "bwn")
    rho = {n: float(c.parametrizations.weight[0].rho) for n, c in conv_layers(model)}
    v0 = {n: c.parametrizations.weight.original.detach().clone() for n, c in conv_layers(model)}
    train_steps(model, steps=5, lr=2.0, wd=0.05)
    moved = 0
    for name, conv in conv_layers(model):
        assert float(conv.parametrizations.weight[0].rho) == rho[name]  # fixed, not learned
        cn = channel_norms(conv.weight.detach())
        torch.testing.assert_close(cn, torch.full_like(cn, rho[name]), rtol=1e-5, atol=0)
        moved += not torch.allclose(conv.parametrizations.weight.original, v0[name])
    assert moved == len(rho)  # the directions did train
    summary = weight_norm_summary(model)
    assert len(summary) == len(rho) and all(r["kind"] == "bwn" for r in summary)
    for r in summary:
        assert r["mean_channel_norm"] == pytest.approx(r["rho"], rel=1e-5)
        assert r["max_channel_norm"] == pytest.approx(r["min_channel_norm"], rel=1e-5)


def test_wn_forward_equals_the_plain_model_right_after_apply():
    torch.manual_seed(3)
    x = torch.randn(4, 1, 8, 8)
    for kind in ("wn", "bwn_gain"):
        plain, wn = tiny(), apply_weight_norm(tiny(), kind)
        plain.eval(), wn.eval()
        torch.testing.assert_close(wn(x), plain(x), rtol=1e-5, atol=1e-6)
        for (_, a), (_, b) in zip(conv_layers(plain), conv_layers(wn)):
            torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-7)
            assert parametrize.is_parametrized(b, "weight")
        assert not parametrize.is_parametrized(wn.fc)
    # wn = torch's weight norm with a learned gain per output channel
    conv = conv_layers(apply_weight_norm(tiny(), "wn"))[0][1]
    g = conv.parametrizations.weight.original0
    assert isinstance(g, nn.Parameter) and g.shape == (conv.out_channels, 1, 1, 1)


def test_bwn_gain_keeps_the_gain_norm_fixed_after_sgd():
    model = apply_weight_norm(tiny(), "bwn_gain")
    g0 = {n: c.parametrizations.weight.original0.detach().clone() for n, c in conv_layers(model)}
    train_steps(model, steps=5, lr=1.0, wd=0.05)
    changed = 0
    for name, conv in conv_layers(model):
        p = conv.parametrizations.weight[0]
        assert isinstance(p, BoundedGainWeightNorm)
        g = conv.parametrizations.weight.original0.detach()
        assert float(p.g0_norm) == pytest.approx(float(g0[name].norm()), rel=1e-6)
        # effective gains = per-channel norms of w; their vector keeps the initial norm ||g0||
        eff = channel_norms(conv.weight.detach())
        assert float(eff.norm()) == pytest.approx(float(p.g0_norm), rel=1e-5)
        # g_c may turn negative
        torch.testing.assert_close(eff, g.flatten().abs() * p.g0_norm / g.norm(), rtol=1e-5, atol=1e-6)
        changed += not torch.allclose(g / g.norm(), g0[name] / g0[name].norm())
    assert changed > 0  # the relative gains are learned


@pytest.mark.parametrize("kind", ["bwn", "wn", "bwn_gain"])
def test_state_dict_round_trip_is_exact(kind):
    model = train_steps(apply_weight_norm(tiny(seed=0), kind), steps=3, lr=0.5)
    fresh = apply_weight_norm(tiny(seed=7), kind)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    for (_, a), (_, b) in zip(conv_layers(model), conv_layers(fresh)):
        assert torch.equal(a.weight, b.weight)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # a plain model's checkpoint does not load silently into a parametrized one
    with pytest.raises(RuntimeError):
        apply_weight_norm(tiny(), kind).load_state_dict(tiny().state_dict())


def test_none_and_errors():
    model = tiny()
    assert apply_weight_norm(model, "none") is model
    assert apply_weight_norm(model, None) is model and apply_weight_norm(model, False) is model
    assert not any(parametrize.is_parametrized(c) for _, c in conv_layers(model))
    with pytest.raises(ConfigError, match=r"unknown norm.weight_norm 'bogus'; choose one of: bwn, bwn_gain, none, wn"):
        apply_weight_norm(model, "bogus")
    apply_weight_norm(model, "bwn")
    with pytest.raises(ConfigError, match="already"):
        apply_weight_norm(model, "wn")
    assert set(KINDS) == {"none", "bwn", "wn", "bwn_gain"}


def test_wd_policy_classifier_decays_only_fc_with_bwn():
    model = apply_weight_norm(tiny(), "bwn")
    groups = {g["name"]: g for g in param_groups(model, 1e-4, "classifier")}
    assert {id(p) for p in groups["decay"]["params"]} == {id(p) for p in model.fc.parameters()}


@pytest.mark.parametrize("norm,kind", [("bwn", "bwn"), ("wn", "wn"), ("bwn_gain", "bwn_gain")])
def test_norm_configs_compose(norm, kind):
    cfg = compose_cfg([f"norm={norm}"])
    assert cfg.norm.name == "mean" and cfg.model.weight_norm == kind
    layer_opts = {k: v for k, v in cfg.norm.items() if k != "name"}
    norm_factory(cfg.norm.name, **layer_opts)(4)  # the options are valid for the mean-only layer
    assert compose_cfg(["norm=l2"]).model.weight_norm == "none"


def test_experiment_configs_compose():
    cfg = compose_cfg(["experiment=bwn_imagenet_resnet50"])
    assert cfg.experiment.name == "bwn_imagenet_resnet50" and cfg.experiment.table == "bwn_resnet50"
    assert (cfg.dataset.name, cfg.model.name, cfg.model.weight_norm) == ("imagenet", "resnet50", "bwn")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_clip) == (90, 256, 5.0)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.wd_policy) == (0.2, 1e-4, "classifier")
    assert list(cfg.optim.schedule.milestones) == [30, 60]
    cfg = compose_cfg(["experiment=bwn_digits", "norm=wn"])
    assert (cfg.dataset.name, cfg.model.name, cfg.model.weight_norm) == ("digits", "resnet20", "wn")
    assert cfg.optim.wd_policy == "classifier" and cfg.train.grad_clip == 5.0


@pytest.mark.parametrize("kind", ["bwn", "wn", "bwn_gain"])
def test_trainer_resume_restores_parametrized_weights_exactly(tmp_path, kind):
    """A run stopped after epoch 1 and resumed ends exactly where an uninterrupted run does."""
    common = TINY + [f"norm={kind}", "optim.schedule.name=constant"]
    full = fit(compose_cfg(common + ["train.epochs=2"]), tmp_path / "full")
    fit(compose_cfg(common + ["train.epochs=1"]), tmp_path / "resumed")
    resumed = fit(compose_cfg(common + ["train.epochs=2"]), tmp_path / "resumed")
    assert resumed["epochs"][-1]["train_loss"] == full["epochs"][-1]["train_loss"]
    assert resumed["epochs"][-1]["test_loss"] == full["epochs"][-1]["test_loss"]
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
