"""Data: deterministic in-memory loaders, CIFAR/ImageNet read from files in their real on-disk formats."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from normrepro.data import DATASET_NAMES, InMemoryLoader, batch_crop, build_data
from normrepro.data.sources import CIFAR_MEAN, CIFAR_STD
from normrepro.errors import ConfigError

CPU = torch.device("cpu")


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_digits_shapes_split_and_determinism():
    b = build_data({"name": "digits", "image_size": 12}, 64, 100, CPU, seed=3)
    assert (b.num_classes, b.in_channels, b.image_size, b.num_train + b.num_test) == (10, 1, 12, 1797)
    x, y = next(iter(b.train))
    assert x.shape == (64, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(b.train) == b.num_train // 64 and len(b.test) == -(-b.num_test // 100)
    again = build_data({"name": "digits", "image_size": 12}, 64, 100, CPU, seed=3)
    e1, e1b, e2 = batches(b.train, 1), batches(again.train, 1), batches(b.train, 2)
    assert all(torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]) for a, c in zip(e1, e1b))
    assert not torch.equal(e1[0][0], e2[0][0])
    other_seed = build_data({"name": "digits", "image_size": 12}, 64, 100, CPU, seed=4)
    assert torch.equal(torch.cat([y for _, y in b.test]), torch.cat([y for _, y in other_seed.test]))


def test_rank_shards_are_disjoint_and_cover():
    x = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    y = torch.arange(20)
    seen = []
    for rank in range(2):
        loader = InMemoryLoader(x, y, 5, [0.0], [1 / 255], shuffle=True, seed=0, drop_last=True, rank=rank,
                                world_size=2)
        seen.append(torch.cat([yy for _, yy in batches(loader, 0)]))
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(seen[0].tolist() + seen[1].tolist()) == list(range(20))


def test_batch_crop_and_flip_match_manual():
    img = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8)
    padded = F.pad(img, (2, 2, 2, 2))
    dy, dx = torch.tensor([0, 3, 4]), torch.tensor([4, 1, 0])
    out = batch_crop(padded, dy, dx, 6)
    for i in range(3):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6])
    loader = InMemoryLoader(img, torch.arange(3), 3, [0.0, 0.0], [1 / 255] * 2, shuffle=True, flip=True, seed=1,
                            drop_last=True)
    xb, yb = next(iter(loader))
    for x, label in zip(xb, yb):
        orig = img[label].float()
        assert torch.allclose(x, orig) or torch.allclose(x, orig.flip(2))


def test_synthetic_is_deterministic_and_learnable():
    cfg = {"name": "synthetic", "num_train": 600, "num_test": 200, "image_size": 8, "in_channels": 3,
           "num_classes": 4, "pad": 0, "flip": False}
    a = build_data(cfg, 600, 200, CPU, seed=0)
    b = build_data(cfg, 600, 200, CPU, seed=0)
    (xa, ya), (xb, yb) = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xt, yt = next(iter(a.test))
    means = torch.stack([xa[ya == c].mean(0) for c in range(4)])  # nearest class mean
    pred = torch.cdist(xt.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yt).float().mean() > 0.6  # chance is 0.25


def test_synthetic_imagenet_shape_is_quick():
    b = build_data({"name": "synthetic", "num_train": 64, "num_test": 16, "image_size": 224}, 32, 16, CPU, 0)
    assert next(iter(b.train))[0].shape == (32, 3, 224, 224)


def write_cifar(root, name, n_train, n_test):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], "fine_labels"
    folder.mkdir(parents=True)
    k = 10 if name == "cifar10" else 100
    written = {}
    for f in files:
        n = n_test if "test" in f else n_train
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, n).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": data, key: labels, "filenames": [f"{i}.png" for i in range(n)]}, fh)
        written[f] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_real_format_round_trip(tmp_path, name):
    written = write_cifar(tmp_path, name, 4, 3)
    b = build_data({"name": name, "root": str(tmp_path), "pad": 0, "flip": False}, 2, 100, CPU, seed=0)
    assert b.num_train == (20 if name == "cifar10" else 4) and b.num_test == 3
    assert b.num_classes == (10 if name == "cifar10" else 100)
    x, y = next(iter(b.test))
    test_data, test_labels = written["test_batch" if name == "cifar10" else "test"]
    pixels = x * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255 + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255
    expected = torch.from_numpy(test_data.reshape(3, 3, 32, 32).astype(np.float32))  # R, G, B planes row-major
    assert torch.allclose(pixels, expected, atol=1e-3)
    assert y.tolist() == test_labels
    xt, yt = next(iter(b.train))  # no augmentation: training images are originals too
    assert xt.shape == (2, 3, 32, 32)


def test_missing_data_names_path(tmp_path):
    with pytest.raises(ConfigError, match=f"CIFAR-10 not found under '{tmp_path}'"):
        build_data({"name": "cifar10", "root": str(tmp_path)}, 2, 2, CPU, 0)
    with pytest.raises(ConfigError, match="ImageNet folder .*train"):
        build_data({"name": "imagenet", "root": str(tmp_path)}, 2, 2, CPU, 0)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'"):
        build_data({"name": "mnist"}, 2, 2, CPU, 0)
    assert set(DATASET_NAMES) == {"digits", "synthetic", "cifar10", "cifar100", "imagenet"}


def test_imagenet_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.JPEG")
    b = build_data({"name": "imagenet", "root": str(tmp_path), "image_size": 32, "num_workers": 0}, 4, 4, CPU, 0)
    assert (b.num_classes, b.num_train, b.num_test) == (2, 8, 4)
    b.train.set_epoch(0)
    x, y = next(iter(b.train))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    xv, yv = next(iter(b.test))
    assert xv.shape == (4, 3, 32, 32) and yv.tolist() == [0, 0, 1, 1]
