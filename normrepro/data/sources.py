"""Readers that return a dataset as uint8 tensors [N, C, H, W] + int64 labels (CPU)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normrepro.errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the paper's (authors' code) CIFAR normalization, PAPER.md §2
CIFAR_STD = (0.2023, 0.1994, 0.2010)

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "label_key": "labels", "tv": "CIFAR10", "title": "CIFAR-10"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "label_key": "fine_labels",
                 "tv": "CIFAR100", "title": "CIFAR-100"},
}


def load_digits_uint8(image_size: int, channels: int = 1):
    """scikit-learn's 8x8 digits (0..16) as uint8 0..255, resized once (bilinear); fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return (x[tr], y[tr]), (x[te], y[te])


def make_synthetic(num_train, num_test, num_classes, image_size, channels, noise, data_seed):
    """A learnable procedural set: per class a smooth random template (4x4 noise upsampled); each sample is
    its template rolled by a random shift, times a random contrast, plus Gaussian noise, as uint8."""
    g = torch.Generator().manual_seed(int(data_seed))
    templates = F.interpolate(torch.randn(num_classes, channels, 4, 4, generator=g), size=(image_size,) * 2,
                              mode="bicubic", align_corners=False)
    templates = templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)

    def sample(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = templates[y]
        shift = max(1, image_size // 8)
        dy, dx = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))  # one shift per chunk of 32 keeps generation fast
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = x * contrast + noise * torch.randn(x.shape, generator=g)
        return (128 + 40 * x).round().clamp(0, 255).to(torch.uint8), y

    train = [sample(min(32, num_train - i)) for i in range(0, num_train, 32)]
    test = [sample(min(32, num_test - i)) for i in range(0, num_test, 32)]
    cat = lambda parts: (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))  # noqa: E731
    return cat(train), cat(test)


def _read_cifar_batch(path: Path, label_key: str):
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data.copy()), torch.as_tensor(entry[label_key], dtype=torch.int64)


def load_cifar_uint8(name: str, root: str, download: bool):
    """CIFAR from torchvision's on-disk python-pickle format under ``root`` (downloaded if asked)."""
    spec = CIFAR[name]
    folder = Path(root) / spec["folder"]
    if not folder.is_dir() and download:
        import torchvision

        try:
            getattr(torchvision.datasets, spec["tv"])(root, download=True)
        except Exception as e:  # noqa: BLE001 - offline, permissions, ...: one user-facing message
            raise ConfigError(f"could not download {spec['title']} into {str(root)!r} ({type(e).__name__}); "
                              f"copy {spec['folder']}/ there by hand") from None
    missing = [f for f in spec["train"] + spec["test"] if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{spec['title']} not found under {str(root)!r} (expected {str(folder)}/ with "
                          f"{', '.join(missing)}); set dataset.root=<dir> or dataset.download=true on a machine "
                          f"with internet")

    def read(files):
        parts = [_read_cifar_batch(folder / f, spec["label_key"]) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return read(spec["train"]), read(spec["test"])
