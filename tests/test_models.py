"""Every model builds through the norm factory, trains one step, and reports bad options clearly."""

import pytest
import torch
from torch import nn

from normrepro.errors import ConfigError
from normrepro.models import MODEL_NAMES, build_model, scale_invariant_layers
from normrepro.norms import norm_factory

TINY = {"wrn": {"depth": 10, "widen_factor": 1, "width": 4}}


def tiny_kwargs(name):
    if name in TINY:
        return TINY[name]
    if name.startswith("vgg"):
        return {"width_mult": 1 / 16}
    if name.startswith("resnet") and name not in ("resnet18", "resnet50"):
        return {"width": 4}
    return {}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_training_step(name):
    torch.manual_seed(0)
    model = build_model(name, 5, norm_factory("l1"), in_channels=1, **tiny_kwargs(name))
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 5
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # ours are _BatchNorms too
    assert norms and all(type(m).__name__ == "L1BatchNorm" for m in norms), "norm_layer ignored"
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 5, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert model(x).shape == (4, 5)
    assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)


def test_unknown_model_and_option():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet7'.*resnet20"):
        build_model("resnet7", 10, nn.BatchNorm2d)
    with pytest.raises(ConfigError, match=r"no option 'depth'.*width"):
        build_model("resnet20", 10, nn.BatchNorm2d, depth=3)
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_model("wrn", 10, nn.BatchNorm2d, depth=11)


def test_scale_invariant_layers_found_and_invariant():
    torch.manual_seed(0)
    model = build_model("resnet20", 10, norm_factory("l2"), width=4)
    layers = scale_invariant_layers(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(n for n, _ in layers) == sorted(convs)
    x = torch.randn(8, 3, 16, 16)
    model.train()
    out = model(x)
    with torch.no_grad():
        for _, m in layers:
            m.weight.mul_(3.0)
    assert torch.allclose(model(x), out, atol=1e-4, rtol=1e-4)
    assert all(n != "fc" for n, _ in layers), "the classifier is not scale invariant"


def test_vgg_conv_bias_switch():
    with_bias = build_model("vgg11", 10, norm_factory("l2"), width_mult=1 / 16)
    without = build_model("vgg11", 10, norm_factory("l2"), width_mult=1 / 16, conv_bias=False)
    assert all(m.bias is not None for m in with_bias.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in without.modules() if isinstance(m, nn.Conv2d))
