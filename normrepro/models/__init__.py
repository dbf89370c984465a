"""Models by name: ``build_model(name, num_classes, norm_layer, in_channels=3, init="he", **kwargs)``.

Every model takes a ``norm_layer(num_features)`` factory (no BatchNorm hard-coded) and names its
final classifier ``model.fc``. ``init`` (``model.init``) is one of ``normrepro.models.init.INITS``.
"""
from __future__ import annotations

import copy
import functools
import inspect

import torch
import torchvision
from torch import nn

from normrepro.errors import ConfigError, choice_error
from normrepro.models.init import INITS, init_weights, initialize, is_norm_layer
from normrepro.models.resnet_cifar import he_resnet, resnet_cifar
from normrepro.models.vgg import VGG
from normrepro.models.wide_resnet import WideResNet


def _torchvision_resnet(arch, num_classes, norm_layer, in_channels=3):
    """torchvision's ImageNet ResNet with our ``norm_layer``; conv1 rebuilt when in_channels != 3."""
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


MODELS = {
    **{f"resnet{d}": functools.partial(he_resnet, d) for d in (14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}_cifar": functools.partial(resnet_cifar, d) for d in (18, 34, 50)},
    "wrn": WideResNet,
    **{f"vgg{d}": functools.partial(VGG, d) for d in (11, 13, 16, 19)},
    "resnet18": functools.partial(_torchvision_resnet, "resnet18"),
    "resnet50": functools.partial(_torchvision_resnet, "resnet50"),
}
MODEL_NAMES = tuple(MODELS)
__all__ = ["INITS", "MODELS", "MODEL_NAMES", "build_model", "init_weights", "is_norm_layer", "model_kwargs",
           "scale_invariant_layers"]


def model_kwargs(name: str) -> tuple[str, ...]:
    """The extra keyword arguments model ``name`` accepts (width, depth, ...)."""
    fixed = {"num_classes", "norm_layer", "in_channels"}
    return tuple(p for p in inspect.signature(MODELS[name]).parameters if p not in fixed)


def build_model(name: str, num_classes: int, norm_layer, in_channels: int = 3, init: str = "he",
                **kwargs) -> nn.Module:
    """Model ``name`` (one of MODEL_NAMES) with ``norm_layer(num_features)`` norms, initialized by ``init``
    (``he``: ``init_weights``; ``torch_default``: torch 0.3's defaults; see ``normrepro/models/init.py``)."""
    if name not in MODELS:
        raise choice_error("model", name, MODEL_NAMES)
    accepted = model_kwargs(name)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"model {name!r} has no option {key!r}; its options: {', '.join(accepted) or 'none'}")
    model = MODELS[name](num_classes=num_classes, norm_layer=norm_layer, in_channels=in_channels, **kwargs)
    initialize(model, init)
    return model


@torch.no_grad()
def scale_invariant_layers(model: nn.Module, input_shape=(2, 3, 16, 16)) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers whose output goes straight into a normalization layer (so the loss is invariant to
    scaling their weight). Found by one forward pass on a dummy batch of ``input_shape``, matching the output
    tensor of each conv/linear with the input tensor of each norm. The pass runs on a copy of the model, so
    running statistics are untouched."""
    original, model = model, copy.deepcopy(model)
    outputs, feeds, hooks, keep = {}, set(), [], []  # keep: hold tensors so their ids are not reused

    def record_output(name):
        def hook(mod, inp, out):
            keep.append(out)
            outputs[id(out)] = name
        return hook

    def record_input(mod, inp):
        keep.append(inp[0])
        feeds.add(id(inp[0]))

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(m.register_forward_hook(record_output(name)))
        elif is_norm_layer(m):
            hooks.append(m.register_forward_pre_hook(record_input))
    was_training = model.training
    param = next(model.parameters())
    try:
        model.train()
        model(torch.randn(*input_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    names = {outputs[i] for i in feeds if i in outputs}
    return [(n, m) for n, m in original.named_modules() if n in names]
