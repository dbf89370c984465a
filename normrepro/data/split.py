"""The held-out validation split (``train.val_fraction``): stratified, carved from the training set.

The split is stratified (each class gives ``round(fraction * its count)`` images, at least one when it has two or
more) and drawn with :data:`SPLIT_SEED`, not the run's seed: every run of a sweep holds out the same images.
"""
from __future__ import annotations

import torch

SPLIT_SEED = 20180608  # fixed: the validation images do not depend on the run's seed


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """(train indices, val indices) of ``labels`` (int64 [N], CPU), both sorted; ``fraction`` of each class
    goes to val."""
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        n_val = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[torch.randperm(len(members), generator=gen)[:n_val]])
    val_idx = torch.sort(torch.cat(val)).values if val else torch.empty(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


def split_labels_of(samples: list[tuple[str, int]]) -> torch.Tensor:
    """The labels of ImageFolder ``(path, label)`` samples as an int64 tensor."""
    return torch.tensor([label for _, label in samples], dtype=torch.long)
