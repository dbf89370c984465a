"""Bounded weight norm (issue 5, docs/paper.md §1.5): BWN, plain WN and BWN with bounded gains on conv layers."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normrepro.errors import ConfigError
from normrepro.models import build_model
from normrepro.models.weight_norm import (
    INITS,
    KINDS,
    BoundedGainWeightNorm,
    BoundedWeightNorm,
    apply_weight_norm,
    conv_layers,
    weight_norm_options,
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


@pytest.mark.parametrize("renorm", [True, False])
def test_bwn_every_channel_norm_is_rho_and_rho_is_the_mean_initial_norm(renorm):
    model = tiny()
    before = {n: c.weight.detach().clone() for n, c in conv_layers(model)}
    apply_weight_norm(model, "bwn", init="he", renorm=renorm)
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
        v = conv.parametrizations.weight.original.detach()  # stored unit (renorm) or as initialized
        torch.testing.assert_close(channel_norms(v), torch.ones(v.shape[0]) if renorm else channel_norms(before[name]))
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
        plain, wn = tiny(), apply_weight_norm(tiny(), kind, init="he")
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


@pytest.mark.parametrize("kind,options", [("bwn", {}), ("bwn", {"renorm": False, "init": "he"}), ("wn", {}),
                                          ("bwn_gain", {})])
def test_state_dict_round_trip_is_exact(kind, options):
    model = train_steps(apply_weight_norm(tiny(seed=0), kind, **options), steps=3, lr=0.5)
    fresh = apply_weight_norm(tiny(seed=7), kind, **options)
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
    with pytest.raises(ConfigError, match=r"unknown model.weight_norm 'bogus'; choose one of: bwn, bwn_gain, none, wn"):
        apply_weight_norm(model, "bogus")
    with pytest.raises(ConfigError, match=r"unknown model.bwn_init 'xavier'; choose one of: he, torch_default"):
        apply_weight_norm(model, "bwn", init="xavier")
    with pytest.raises(ConfigError, match=r"model.bwn_renorm must be true or false, got 'yes'"):
        apply_weight_norm(model, "bwn", renorm="yes")
    assert not any(parametrize.is_parametrized(c) for _, c in conv_layers(model))  # nothing half-applied
    apply_weight_norm(model, "bwn")
    with pytest.raises(ConfigError, match="already"):
        apply_weight_norm(model, "wn")
    assert set(KINDS) == {"none", "bwn", "wn", "bwn_gain"} and set(INITS) == {"torch_default", "he"}


def test_wd_policy_classifier_decays_only_fc_with_bwn():
    model = apply_weight_norm(tiny(), "bwn")
    groups = {g["name"]: g for g in param_groups(model, 1e-4, "classifier")}
    assert {id(p) for p in groups["decay"]["params"]} == {id(p) for p in model.fc.parameters()}


@pytest.mark.parametrize("norm,kind,options", [("bwn", "bwn", {"init": "torch_default", "renorm": True}),
                                                ("wn", "wn", {"init": "he"}),
                                                ("bwn_gain", "bwn_gain", {"init": "torch_default"})])
def test_norm_configs_compose(norm, kind, options):
    cfg = compose_cfg([f"norm={norm}"])
    assert cfg.norm.name == "mean" and cfg.model.weight_norm == kind
    assert weight_norm_options(cfg.model) == options  # the authors' choices for bwn / bwn_gain
    layer_opts = {k: v for k, v in cfg.norm.items() if k != "name"}
    norm_factory(cfg.norm.name, **layer_opts)(4)  # the options are valid for the mean-only layer
    assert compose_cfg(["norm=l2"]).model.weight_norm == "none"
    assert weight_norm_options(compose_cfg([f"norm={norm}", "model.bwn_init=he"]).model)["init"] == "he"


def test_experiment_configs_compose():
    cfg = compose_cfg(["experiment=bwn_imagenet_resnet50"])
    assert cfg.experiment.name == "bwn_imagenet_resnet50" and cfg.experiment.table == "bwn_resnet50"
    # the authors' ResNet-50 used the bounded-gain variant (docs/paper.md §6), so it is the experiment's default
    assert (cfg.dataset.name, cfg.model.name, cfg.model.weight_norm) == ("imagenet", "resnet50", "bwn_gain")
    assert (cfg.model.bwn_init, cfg.norm.name) == ("torch_default", "mean")
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


# --- the authors' fixed-rho BWN, checked against an independent computation -------------------------------------
# Their convNet.pytorch bwn.py, restated: before every forward v_c <- v_c / ||v_c||; w_c = rho * v_c / ||v_c||. The
# gradient is taken at ||v_c|| = 1, so dL/dv_c = rho * (I - v_c v_c^T) dL/dw_c, and SGD (momentum mu) moves v_c by
# lr * rho * (projected dL/dw_c) accumulated in the buffer; the next forward renormalizes. Without renorm,
# dL/dv_c = rho / ||v_c|| * (I - u_c u_c^T) dL/dw_c with u_c = v_c / ||v_c|| and v keeps its norm.

LR_BWN, MU_BWN, STEPS_BWN = 0.5, 0.9, 6


def _bwn_problem():
    g = torch.Generator().manual_seed(5)
    readout = torch.randn(5, 4, generator=g, dtype=torch.float64)
    batches = [(torch.randn(6, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g))
               for _ in range(STEPS_BWN)]
    return readout, batches


def _bwn_loss(w, readout, x, y):
    return nn.functional.cross_entropy(torch.relu(nn.functional.conv2d(x, w)).mean((2, 3)) @ readout.T, y)


def _per_channel_dot(a, b):
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


def _independent_bwn(v, rho, renorm):
    """Effective weights after every step, from the description above (plain tensors, no parametrization)."""
    readout, batches = _bwn_problem()
    buf, seen = None, []
    for x, y in batches:
        if renorm:
            v = v / channel_norms(v).view(-1, 1, 1, 1)
        norm = channel_norms(v).view(-1, 1, 1, 1)
        u = v / norm
        w = (rho * u).requires_grad_(True)
        (g_w,) = torch.autograd.grad(_bwn_loss(w, readout, x, y), (w,))
        g_v = rho / norm * (g_w - u * _per_channel_dot(u, g_w))
        buf = g_v.clone() if buf is None else MU_BWN * buf + g_v
        v = v - LR_BWN * buf
        seen.append(rho * v / channel_norms(v).view(-1, 1, 1, 1))
    return seen


def _ours_bwn(renorm):
    torch.manual_seed(0)
    model = apply_weight_norm(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)).double(), "bwn", renorm=renorm)
    conv = model[0]
    v0, rho = conv.parametrizations.weight.original.detach().clone(), conv.parametrizations.weight[0].rho.clone()
    opt = torch.optim.SGD(model.parameters(), lr=LR_BWN, momentum=MU_BWN)
    readout, batches = _bwn_problem()
    model.train()
    seen = []
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(torch.relu(model(x)).mean((2, 3)) @ readout.T, y).backward()
        opt.step()
        seen.append(conv.weight.detach().clone())
    return seen, v0, float(rho)


@pytest.mark.parametrize("renorm", [True, False])
def test_bwn_steps_match_an_independent_computation(renorm):
    seen, v0, rho = _ours_bwn(renorm)
    expected = _independent_bwn(v0, rho, renorm)
    for step, (w, w_ref) in enumerate(zip(seen, expected)):
        err = float((w - w_ref).abs().max())
        assert err < 1e-10, f"step {step}: effective weight differs by {err:.3g}"
        torch.testing.assert_close(channel_norms(w), torch.full((4,), rho, dtype=torch.float64))


def test_bwn_renorm_changes_the_steps():
    """Control: with the default torch init ||v_c|| ~ 0.58, so the un-normalized variant steps ~1.7x larger on the
    direction at first; the trajectories part, and renorm keeps v at unit channels."""
    with_renorm, v0, _ = _ours_bwn(True)
    without, _, _ = _ours_bwn(False)
    torch.testing.assert_close(channel_norms(v0), torch.ones(4, dtype=torch.float64))
    assert float((with_renorm[-1] - without[-1]).abs().max()) > 1e-3


def test_bwn_renorm_keeps_v_unit_and_leaves_eval_forwards_alone():
    model = train_steps(apply_weight_norm(tiny(), "bwn"), steps=3, lr=1.0)
    conv = conv_layers(model)[1][1]
    v = conv.parametrizations.weight.original
    assert float((channel_norms(v.detach()) - 1).abs().max()) > 1e-4  # the last step moved v off the sphere
    w = conv.weight.detach().clone()
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    assert float((channel_norms(v.detach()) - 1).abs().max()) > 1e-4  # eval: untouched
    model.train()
    model(torch.randn(2, 1, 8, 8))
    torch.testing.assert_close(channel_norms(v.detach()), torch.ones(v.shape[0]))  # training forward: renormalized
    torch.testing.assert_close(conv.weight.detach(), w)  # ... which leaves the effective weight as it was


def test_torch_default_init_is_pytorchs_default_conv_init():
    """bwn_init=torch_default redraws each conv weight exactly as a fresh nn.Conv2d would (same RNG state); the bias
    keeps the model's init; the budget rho is the mean channel norm of that draw (||w_c||^2 ~ 1/3), not He's."""
    conv = nn.Conv2d(8, 16, 3)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    torch.manual_seed(11)
    expected = nn.Conv2d(8, 16, 3).weight.detach().clone()
    torch.manual_seed(11)
    model = apply_weight_norm(nn.Sequential(conv), "bwn_gain")
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    torch.testing.assert_close(v.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(conv.weight.detach(), expected)  # bwn_gain: the forward is the default init's
    assert torch.equal(conv.bias.detach(), torch.zeros(16))
    assert float(conv.parametrizations.weight[0].g0_norm) == pytest.approx(float(g.detach().flatten().norm()))
    assert float(channel_norms(expected).pow(2).mean()) == pytest.approx(1 / 3, rel=0.15)
    he = apply_weight_norm(tiny(), "bwn", init="he")
    default = apply_weight_norm(tiny(), "bwn")
    rho_he = [float(c.parametrizations.weight[0].rho) for _, c in conv_layers(he)]
    rho_default = [float(c.parametrizations.weight[0].rho) for _, c in conv_layers(default)]
    assert all(d < 0.7 * h for d, h in zip(rho_default[1:], rho_he[1:]))  # 3x3, C_in = C_out: ~0.58 vs ~1.41
    assert len(model.state_dict()) == 4  # g, v, g0_norm, bias


def test_their_he_init_after_the_reparametrization_changes_nothing():
    """The authors' order: wrap the conv, then write He init into ``m.weight.data``. That tensor is derived and
    recomputed by the next forward, so the He draw is lost: torch_default is what their code trains from."""
    torch.manual_seed(0)
    model = apply_weight_norm(nn.Sequential(nn.Conv2d(4, 4, 3, bias=False)), "bwn_gain")
    conv = model[0]
    before = conv.weight.detach().clone()
    conv.weight.data.normal_(0, (2.0 / (9 * 4)) ** 0.5)  # their init_model
    torch.testing.assert_close(conv.weight.detach(), before, rtol=0, atol=0)


def test_bad_weight_norm_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model.bwn_init 'xavier'; choose one of: he, torch_default"):
        fit(compose_cfg(TINY + ["norm=bwn", "model.bwn_init=xavier"]), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model.bwn_renorm must be true or false, got 'maybe'"):
        fit(compose_cfg(TINY + ["norm=bwn", "model.bwn_renorm=maybe"]), tmp_path / "b")
    assert not (tmp_path / "a" / "metrics.json").exists()
