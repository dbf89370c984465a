"""The layers where torch's tools expect batch norms (issue 13): convert_norms on torchvision models and on
BatchNorm1d/3d, swa_utils.update_bn recomputing our running statistics, reset_running_stats/reset_parameters,
and split_norm_params for no-weight-decay groups."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.errors import ConfigError
from normrepro.norms import NORMS, build_norm, convert_norms, split_norm_params
from normrepro.norms.layers import NormLayer

TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.1)
                m.num_batches_tracked.fill_(7)


@pytest.mark.parametrize("arch,name,opts", [("resnet18", "l1", {}), ("resnet18", "topk_ghost", {"k": 5}),
                                            ("mobilenet_v3_small", "mean", {}),
                                            ("mobilenet_v3_small", "l2", {"impl": "lp"})],
                         ids=["resnet18-l1", "resnet18-topk_ghost", "mobilenetv3-mean", "mobilenetv3-l2lp"])
def test_convert_torchvision_models(arch, name, opts):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=7)
    _randomize_bn(model)
    old = {n: m for n, m in model.named_modules() if isinstance(m, TORCH_BN)}
    assert old
    out = convert_norms(model, name, **opts)
    assert out is model
    mods = dict(model.named_modules())
    assert not any(isinstance(m, TORCH_BN) for m in model.modules())  # no torch batch norm class left
    cls = NORMS[name].impls[opts.get("impl", next(iter(NORMS[name].impls)))][0]
    for n, bn in old.items():
        new = mods[n]
        assert type(new) is cls and new.num_features == bn.num_features
        assert new.eps == (0.0 if name == "mean" else bn.eps) and new.momentum == bn.momentum
        if name != "mean":
            assert torch.equal(new.weight, bn.weight)
        assert torch.equal(new.bias, bn.bias) and torch.equal(new.running_mean, bn.running_mean)
        if name == "l2":
            assert torch.equal(new.running_var, bn.running_var)
        elif name != "mean":
            torch.testing.assert_close(new.running_scale, bn.running_var.sqrt())
        assert int(new.num_batches_tracked) == 7
    x = torch.randn(2, 3, 16, 16)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "bn" in n or n.endswith("1.weight"))
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_convert_batchnorm1d_3d_sync_and_options():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4, eps=1e-3, momentum=None),
                          nn.Flatten(2), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4 * 27, 5), nn.BatchNorm1d(5),
                          nn.SyncBatchNorm(5))
    ref = [m for m in model if isinstance(m, _BatchNorm)]
    x = torch.randn(4, 2, 3, 3, 3)
    convert_norms(model, "l2", impl="lp", track_max_dev=True)
    norms = [m for m in model if isinstance(m, NormLayer)]
    assert len(norms) == 4 and all(m.norm_name == "l2" and m.track_max_dev for m in norms)
    assert norms[0].eps == 1e-3 and norms[0].momentum is None and norms[1].momentum == 0.1
    # 5-D and 3-D inputs: this package's L2 equals torch's batch norms on the same input
    y = model[1](model[0](x))
    torch.testing.assert_close(y, ref[0](model[0](x)))
    h = model[2](y)
    torch.testing.assert_close(model[3](h), ref[1](h))
    convert_norms(model, "l1", eps=0.0)  # ours are left alone (already converted)
    assert type(model[1]).__name__ == "L2LpBatchNorm"
    bn = nn.BatchNorm2d(3)
    assert type(convert_norms(bn, "topk")).__name__ == "TopkBatchNorm"


def test_convert_bad_input_is_one_line():
    for call, text in ((lambda: convert_norms(nn.BatchNorm2d(3), "l3"), "unknown norm 'l3'; choose one of:"),
                       (lambda: convert_norms(nn.BatchNorm2d(3), "l1", k=3), "norm 'l1' has no option 'k'")):
        with pytest.raises(ConfigError) as e:
            call()
        assert text in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,opts", [("l1", {}), ("topk", {}), ("topk_ghost", {}), ("mean", {}),
                                       ("l2", {"impl": "lp"})], ids=["l1", "topk", "topk_ghost", "mean", "l2lp"])
def test_swa_update_bn_recomputes_our_running_statistics(name, opts):
    m = build_norm(name, 3, momentum=0.3, **opts).double()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64) * (i + 1) + i for i in range(3)]
    for x in batches:  # training: stale statistics of other data
        m(3 * x + 5)
    m.eval()
    mean, scale, state = [], [], m.state_dict()
    for x in batches:  # one by one: the batch statistics of each batch, to be averaged equally (momentum=None)
        probe = build_norm(name, 3, momentum=1.0, **opts).double()
        probe.load_state_dict(state)
        probe(x)
        if name == "topk_ghost":  # the history carries over from batch to batch
            state = {**state, "topk_history": probe.topk_history.clone()}
        mean.append(probe.running_mean.clone())
        if name != "mean":
            scale.append(getattr(probe, "running_var" if name == "l2" else "running_scale").clone())
    torch.optim.swa_utils.update_bn(batches, m)
    assert m.momentum == 0.3 and not m.training  # restored
    assert int(m.num_batches_tracked) == 3
    torch.testing.assert_close(m.running_mean, torch.stack(mean).mean(0))
    if name != "mean":
        buf = m.running_var if name == "l2" else m.running_scale
        torch.testing.assert_close(buf, torch.stack(scale).mean(0))


def test_reset_running_stats_and_parameters():
    for name in ("l1", "linf", "topk", "topk_ghost", "mean", "l2"):
        m = build_norm(name, 3, **({"impl": "lp"} if name == "l2" else {}))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        m(torch.randn(8, 3, 2, 2) * 3 + 1)
        history = m.topk_history.clone() if name == "topk_ghost" else None
        m.reset_running_stats()
        assert torch.equal(m.running_mean, torch.zeros(3)) and int(m.num_batches_tracked) == 0
        for buf in ("running_scale", "running_var"):
            if hasattr(m, buf):
                assert torch.equal(getattr(m, buf), torch.ones(3))
        if history is not None:  # the ghost history is part of the training statistic, not a running one
            assert torch.equal(m.topk_history, history)
        assert m.bias.sum() != 0
        m.reset_parameters()
        assert torch.equal(m.bias, torch.zeros(3))
        if m.weight is not None:
            assert torch.equal(m.weight, torch.ones(3))


def test_split_norm_params_for_weight_decay_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), build_norm("l1", 4), nn.Conv2d(4, 4, 1), build_norm("mean", 4),
                          nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5),
                          nn.LayerNorm(5), build_norm("none", 5))
    norm, other = split_norm_params(model)
    want_norm = [*model[1].parameters(), *model[3].parameters(), *model[4].parameters(), *model[7].parameters()]
    assert [id(p) for p in norm] == [id(p) for p in want_norm]
    assert {id(p) for p in norm} | {id(p) for p in other} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in norm} & {id(p) for p in other}
    opt = torch.optim.SGD([{"params": norm, "weight_decay": 0.0}, {"params": other}], lr=0.1, weight_decay=1e-4)
    assert len(opt.param_groups) == 2
