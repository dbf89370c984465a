"""Use the norms in any model: ``convert_norms`` swaps torch's batch norms for ours, ``split_norm_params`` lists the
norm parameters for a no-weight-decay parameter group."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normrepro.norms.layers import NormLayer
from normrepro.norms.registry import NORM_OPTIONS, build_norm, check_name, is_norm_layer, validate

#: the settings of a torch batch norm carried into the new layer unless the caller sets them
_CARRIED = ("eps", "momentum", "affine")


def _is_torch_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and not isinstance(module, NormLayer)


@torch.no_grad()
def _carry_state(old: _BatchNorm, new: nn.Module) -> None:
    """Copy gamma, beta and the running statistics of ``old`` into ``new``: running_mean as is, the running scale
    from sqrt(running_var) (l2: running_var itself), num_batches_tracked."""
    for pname in ("weight", "bias"):
        src, dst = getattr(old, pname, None), getattr(new, pname, None)
        if src is not None and dst is not None:
            dst.copy_(src)
            dst.requires_grad_(src.requires_grad)
    if getattr(old, "running_mean", None) is None:
        return
    if hasattr(new, "running_mean"):
        new.running_mean.copy_(old.running_mean)
    if hasattr(new, "running_var"):
        new.running_var.copy_(old.running_var)
    elif hasattr(new, "running_scale"):
        new.running_scale.copy_(old.running_var.clamp_min(0).sqrt())
    if getattr(old, "num_batches_tracked", None) is not None and hasattr(new, "num_batches_tracked"):
        new.num_batches_tracked.copy_(old.num_batches_tracked)


def _replacement(old: _BatchNorm, name: str, options: dict) -> nn.Module:
    opts = {key: getattr(old, key) for key in _CARRIED if key in NORM_OPTIONS[name] and key not in options}
    new = build_norm(name, old.num_features, **{**opts, **options})
    ref = old.weight if old.weight is not None else getattr(old, "running_mean", None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    _carry_state(old, new)
    new.train(old.training)
    return new


def convert_norms(model: nn.Module, name: str, **options) -> nn.Module:
    """Replace every torch batch norm of ``model`` (BatchNorm1d/2d/3d, SyncBatchNorm, any ``_BatchNorm`` that is not
    this package's) by ``build_norm(name, C, **options)`` and return the model (the model itself is changed, like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; a batch norm passed as ``model`` is returned replaced). Carried
    over: gamma, beta, running_mean, the running scale initialized from sqrt(running_var) (l2: running_var),
    num_batches_tracked, and eps / momentum / affine unless ``options`` sets them. Ghost Top-k starts its history
    at 0; mean-only BN has no gamma. The new layers accept (N, C) to (N, C, D, H, W) input, so BatchNorm3d's too.
    Unknown name or option: ConfigError."""
    check_name(name)
    options = validate(name, options)
    if _is_torch_batch_norm(model):
        return _replacement(model, name, options)
    for child_name, child in model.named_children():
        if _is_torch_batch_norm(child):
            setattr(model, child_name, _replacement(child, name, options))
        else:
            convert_norms(child, name, **options)
    return model


def split_norm_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters of the normalization layers, all other parameters) of ``model``: e.g. for
    ``SGD([{"params": norm, "weight_decay": 0}, {"params": other}])``. Recognises this package's norms and every
    torch ``_BatchNorm``, ``GroupNorm``, ``LayerNorm``, ``InstanceNorm`` and ``LocalResponseNorm``, like
    torchvision's ``split_normalization_params``; each parameter is listed once."""
    torch_norms = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
    norm, other, seen = [], [], set()
    for module in model.modules():
        is_norm = is_norm_layer(module) or isinstance(module, torch_norms)
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                (norm if is_norm else other).append(p)
    return norm, other
