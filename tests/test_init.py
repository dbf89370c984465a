"""The authors' model choices (issue 11): model.init=torch_default is torch 0.3's layer initialization (their VGG-11),
model=resnet14 is their CIFAR "ResNet-18" (2 basic blocks per stage, 1x1 conv shortcuts, 175,258 parameters)."""
import math

import pytest
import torch
from torch import nn

from normrepro.errors import ConfigError
from normrepro.models import build_model
from normrepro.norms import is_norm_layer, norm_factory
from normrepro.trainer import build_model_for
from tests.helpers.config import compose_cfg


def test_torch_default_is_torch_03s_reset_parameters():
    """conv and Linear weight and bias ~ U(±1/√fan_in) (so E‖w_c‖² = 1/3), norm γ ~ U(0, 1), β = 0: checked on the
    full VGG-11 against the distributions' bounds and moments."""
    torch.manual_seed(0)
    model = build_model("vgg11", 10, norm_factory("l2"), init="torch_default")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in [*convs, model.fc]:
        fan_in = m.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        for t in (m.weight, m.bias):
            assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
        if m.weight.numel() > 10_000:
            assert abs(m.weight.var().item() / (bound ** 2 / 3) - 1) < 0.05
    channel_sq = torch.cat([m.weight.detach().pow(2).sum((1, 2, 3)) for m in convs])
    assert abs(channel_sq.mean().item() - 1 / 3) < 0.01
    gammas = torch.cat([m.weight.detach() for m in model.modules() if is_norm_layer(m)])
    betas = torch.cat([m.bias.detach() for m in model.modules() if is_norm_layer(m)])
    assert gammas.min() >= 0 and gammas.max() < 1 and abs(gammas.mean().item() - 0.5) < 0.03
    assert torch.equal(betas, torch.zeros_like(betas))


def test_he_init_is_unchanged_by_default():
    torch.manual_seed(0)
    he = build_model("vgg11", 10, norm_factory("l2"), width_mult=1 / 8)
    torch.manual_seed(0)
    explicit = build_model("vgg11", 10, norm_factory("l2"), width_mult=1 / 8, init="he")
    assert all(torch.equal(a, b) for a, b in zip(he.state_dict().values(), explicit.state_dict().values()))
    gammas = [m.weight for m in he.modules() if is_norm_layer(m)]
    assert all(torch.equal(g, torch.ones_like(g)) for g in gammas)
    conv = [m for m in he.modules() if isinstance(m, nn.Conv2d)][1]  # kaiming-normal, fan_out: std sqrt(2 / (9 C_out))
    assert abs(conv.weight.std().item() / math.sqrt(2 / (9 * conv.out_channels)) - 1) < 0.1


def test_model_init_from_the_config():
    torch.manual_seed(0)
    model = build_model_for(compose_cfg(["model=vgg11", "model.width_mult=0.25", "model.init=torch_default"]), 10, 3)
    gammas = torch.cat([m.weight.detach() for m in model.modules() if is_norm_layer(m)])
    assert gammas.min() >= 0 and gammas.max() < 1 and gammas.std() > 0.1
    assert compose_cfg(["experiment=wd_lr_cifar10_vgg11", "recipe=authors"]).model.init == "torch_default"
    with pytest.raises(ConfigError, match="unknown model.init 'bogus'; choose one of: he, torch_default"):
        build_model("vgg11", 10, norm_factory("l2"), init="bogus")


def test_resnet14_is_their_cifar_resnet18():
    """norm_matters ResNet_cifar10(depth=18): n = 2 blocks per stage at widths 16/32/64, 1x1 conv + norm shortcut
    exactly where the stride or width changes (stages 2 and 3), 175,258 parameters for 10 classes."""
    model = build_model("resnet14", 10, norm_factory("l1"))
    assert sum(p.numel() for p in model.parameters()) == 175_258
    assert [len(stage) for stage in model.layers] == [2, 2, 2]
    assert [b.conv1.out_channels for stage in model.layers for b in stage] == [16, 16, 32, 32, 64, 64]
    projections = [(i, j) for i, stage in enumerate(model.layers) for j, b in enumerate(stage)
                   if not isinstance(b.shortcut, nn.Identity)]
    assert projections == [(1, 0), (2, 0)]
    conv, norm = model.layers[1][0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None and is_norm_layer(norm)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert compose_cfg(["model=resnet14"]).model.width == 16
