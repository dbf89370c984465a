"""L2 terms outside the optimizer's weight decay, as the authors' training script has them (``recipe=authors``).

- ``train.classifier_penalty`` = λ: the loss becomes CE + ½·λ·‖θ_fc‖², θ_fc the weight and bias of ``model.fc``
  (their ``main.py``: ``loss = criterion(output, target) + 0.5 * sum(p.norm() ** 2 for p in fc) * 1e-4``). Its
  gradient λ·θ_fc enters the backward pass, so gradient clipping scales it, unlike weight decay, which the
  optimizer adds after clipping. The logged losses stay the cross-entropy.
- ``optim.wd_zero_epoch`` = E: weight decay 0 in every parameter group from the start of (0-based) epoch E on
  (their CIFAR regime: ``{'epoch': 122, 'weight_decay': 0}``); E < 1 is a fraction of ``train.epochs``, as the LR
  milestones. One way only: before E the groups keep the decay they were built with, and a checkpoint holds the
  groups' values, so a resumed run continues exactly.
"""
from __future__ import annotations

import torch
from torch import nn


def with_classifier_penalty(loss: torch.Tensor, model: nn.Module, coeff: float) -> torch.Tensor:
    """``loss + 0.5 * coeff * sum ||p||^2`` over the parameters of ``model.fc`` (in fp32); ``loss`` when coeff is 0."""
    coeff = float(coeff or 0.0)
    if coeff == 0.0:
        return loss
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ValueError("train.classifier_penalty needs the model's classifier at `model.fc`")
    squares = sum(p.float().pow(2).sum() for p in fc.parameters())
    return loss + 0.5 * coeff * squares


def wd_zero_start(zero_epoch: float | None, epochs: int) -> float | None:
    """The epoch from which weight decay is 0: ``zero_epoch`` (a fraction of ``epochs`` when in (0, 1)), or None."""
    if zero_epoch is None:
        return None
    zero_epoch = float(zero_epoch)
    return zero_epoch * epochs if 0 < zero_epoch < 1 else zero_epoch


def apply_wd_zero_epoch(optimizer: torch.optim.Optimizer, zero_epoch: float | None, epoch: int, epochs: int) -> bool:
    """At the start of 0-based epoch ``epoch``: set every group's weight decay to 0 when ``epoch`` has reached
    :func:`wd_zero_start`; returns whether it has."""
    start = wd_zero_start(zero_epoch, epochs)
    if start is None or epoch < start:
        return False
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0
    return True
