"""Tiny datasets on disk in their real formats: CIFAR python pickles, an ImageNet ImageFolder tree."""
from __future__ import annotations

import pickle

import numpy as np
from PIL import Image


def write_cifar(root, name, n_train, n_test, bytes_keys=True):
    """Tiny CIFAR files in the real python-pickle format (keys as bytes, like ``pickle.load(encoding='bytes')``
    shows the originals, or str like torchvision's ``latin1`` load): returns {file: (data N x 3072, labels)}."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], "fine_labels"
        meta = ("meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                         "coarse_label_names": [f"c{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    k = 10 if name == "cifar10" else 100
    enc = (lambda d: {s.encode(): v for s, v in d.items()}) if bytes_keys else (lambda d: d)
    written, start = {}, 0
    for f in files:
        n = n_test if "test" in f else n_train
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(start, start + n) % 256  # red top-left pixel = running index: identifies the image
        start += n
        labels = rng.integers(0, k, n).tolist()
        entry = {"batch_label": f"batch {f}", "data": data, key: labels, "filenames": [f"{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [lab // 5 for lab in labels]
        with open(folder / f, "wb") as fh:
            pickle.dump(enc(entry), fh)
        written[f] = (data, labels)
    with open(folder / meta[0], "wb") as fh:
        pickle.dump(enc(meta[1]), fh)
    return written


def write_imagenet(root, n_train=4, n_val=2, classes=("n01", "n02"), size=(40, 48)):
    """root/{train,val}/<class>/<i>.JPEG: random RGB images of ``size`` (height, width)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.JPEG")
