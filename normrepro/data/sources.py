"""Readers that return a dataset as uint8 tensors [N, C, H, W] + int64 labels, on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normrepro.data.memory import mix_seed
from normrepro.errors import ConfigError
from normrepro.safe_load import restricted_pickle_load

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the paper's (authors' code) CIFAR normalization, docs/paper.md §2
CIFAR_STD = (0.2023, 0.1994, 0.2010)

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "label_key": "labels", "classes": 10, "tv": "CIFAR10", "title": "CIFAR-10"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "label_key": "fine_labels",
                 "classes": 100, "tv": "CIFAR100", "title": "CIFAR-100"},
}


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 [N, C, H, W] images to size x size (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def load_digits_uint8(image_size: int = 16, channels: int = 1):
    """scikit-learn's 1797 8x8 digits (levels 0..16) as uint8 0..255, resized once; fixed stratified 80/20 split
    (split seed 0, independent of the run seed). ``channels`` > 1 replicates the gray channel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    x = resize_uint8(x, image_size).expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return (x[tr], y[tr]), (x[te], y[te])


def make_synthetic(num_train, num_test, num_classes, image_size, channels, noise, data_seed, chunk=64, ctrl=8):
    """A learnable, not trivial procedural set, deterministic given ``data_seed``.

    Each class has a smooth random template (``ctrl`` x ``ctrl`` Gaussian noise, bicubically upsampled). A sample
    is its class template at a random shift (up to image_size/4) with a random contrast, plus a weaker distractor
    (a random class's template at another shift), plus Gaussian pixel noise of std ``noise`` (templates have
    std 1), quantized to uint8. Classes are balanced; train and test come from separate random streams.
    A linear model reaches ~95% at 16 px (noise 0.3), a small CNN climbs over a few epochs; chance is 1/k.
    """
    k, size, c = int(num_classes), int(image_size), int(channels)
    shift = max(1, size // 4)
    big = size + 2 * shift
    g = torch.Generator().manual_seed(mix_seed(data_seed, 0))
    templates = F.interpolate(torch.randn(k, c, ctrl, ctrl, generator=g), size=(big, big), mode="bicubic",
                              align_corners=False)
    templates = (templates - templates.mean((1, 2, 3), keepdim=True)) / templates.flatten(1).std(1).view(-1, 1, 1, 1)

    def split(n, stream):
        """``n`` synthetic images and their labels for one split, drawn from its own seeded stream."""
        g = torch.Generator().manual_seed(mix_seed(data_seed, stream))
        y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        x = torch.empty(n, c, size, size, dtype=torch.uint8)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            other = torch.randint(0, k, (m,), generator=g).tolist()  # the distractor's class
            dy, dx, oy, ox = torch.randint(0, 2 * shift + 1, (4, m), generator=g).tolist()
            signal = (0.6 + 0.8 * torch.rand(m, generator=g)).tolist()  # contrasts
            clutter = (0.6 * torch.rand(m, generator=g)).tolist()
            img = torch.randn(m, c, size, size, generator=g).mul_(float(noise))
            for i, label in enumerate(y[s:s + m].tolist()):  # slicing per image: no index tensors, fast at 224 px
                img[i].add_(templates[label, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size], alpha=signal[i])
                img[i].add_(templates[other[i], :, oy[i]:oy[i] + size, ox[i]:ox[i] + size], alpha=clutter[i])
            x[s:s + m] = img.mul_(40.0).add_(128.0).round_().clamp_(0, 255).to(torch.uint8)
        return x, y

    return split(int(num_train), 1), split(int(num_test), 2)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int):
    """One python-pickle batch, read like torchvision does (latin1; keys may be str or bytes) through a restricted
    unpickler (numpy arrays and plain data only); its content is checked: ``data`` uint8 [N, 3072], ``label_key``
    N integers in [0, num_classes). Anything else is a one-line ConfigError naming the file."""
    entry = restricted_pickle_load(path, "CIFAR batch")
    bad = lambda what: ConfigError(f"bad CIFAR batch {str(path)!r}: {what}; re-download it")  # noqa: E731
    if not isinstance(entry, dict):
        raise bad(f"expected a dict, found {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    for key in ("data", label_key):
        if key not in entry:
            raise bad(f"no {key!r} entry (it has {', '.join(sorted(map(str, entry)))})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"'data' must be a uint8 array [N, 3072] (32x32 RGB planes), found {shape}")
    try:
        labels = np.asarray(entry[label_key])
    except (TypeError, ValueError):
        labels = np.asarray([])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise bad(f"{label_key!r} must be {len(data)} integers (one per image), found "
                  f"{labels.shape[0] if labels.ndim == 1 else labels.shape} of dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise bad(f"labels must be in [0, {num_classes}), found {int(labels.min())}..{int(labels.max())}")
    images = data.reshape(-1, 3, 32, 32)  # R, G, B planes, rows
    return torch.from_numpy(images.copy()), torch.as_tensor(labels, dtype=torch.int64)


def load_cifar_uint8(name: str, root: str, download: bool):
    """CIFAR-10/100 from torchvision's on-disk python-pickle format under ``root`` (downloaded there if asked).

    The batches are read directly (as torchvision does) rather than through ``torchvision.datasets.CIFAR10``,
    whose constructor md5-checks every file: that check would refuse the tiny files the tests write.
    """
    spec = CIFAR[name]
    folder = Path(root) / spec["folder"]
    files = spec["train"] + spec["test"]
    if download and not all((folder / f).is_file() for f in files):
        import torchvision

        try:
            getattr(torchvision.datasets, spec["tv"])(root, download=True)
        except Exception as e:  # noqa: BLE001 - offline, permissions, ...: one user-facing message
            why = " ".join(f"{type(e).__name__}: {e}".split())
            raise ConfigError(f"could not download {spec['title']} into {str(root)!r} ({why}); "
                              f"copy {spec['folder']}/ there by hand") from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        what = f"expected {spec['folder']}/" if len(missing) == len(files) else \
            f"{spec['folder']}/ lacks {', '.join(missing)}"
        raise ConfigError(f"{spec['title']} not found under {str(root)!r} ({what}); set dataset.root=<dir> or "
                          f"dataset.download=true on a machine with internet")

    def read(names):
        """Images and labels of the named CIFAR batch files, concatenated."""
        parts = [_read_cifar_batch(folder / f, spec["label_key"], spec["classes"]) for f in names]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return read(spec["train"]), read(spec["test"])
