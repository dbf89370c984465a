"""ImageNet in the ImageFolder layout (``root/train/<class>/*``, ``root/val/<class>/*``) through a DataLoader.

Workers decode JPEGs and return uint8 crops (4x less to copy than float); the device loader moves them
(pinned, non-blocking) and normalizes there. Augmentation is seeded per (seed, epoch, image) rather than by
the workers' global RNG, so batches are deterministic given (seed, epoch) whatever the worker count, with
persistent workers too, and a resumed run sees what an uninterrupted one sees. A mid-epoch resume at batch b
starts the sampler b batches into the epoch's permutation (``set_epoch(epoch, start_batch=b)``): the skipped
batches are neither loaded nor decoded, so resuming costs one permutation, not b batches of JPEG decoding.

A corrupt or unreadable image stops the run (no skip-and-count: skipping would change the batches silently, and the
paper's numbers assume the whole set): the first one a worker meets is one ``error:`` line naming its path (a
:class:`DataFileError`, exit 2). Remove or replace the file and run again: the run resumes from its last checkpoint.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from normrepro.data.memory import epoch_generator
from normrepro.data.options import required
from normrepro.data.split import split_labels_of, stratified_split
from normrepro.errors import ConfigError, DataFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_params(width, height, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params (top, left, h, w), drawing from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: central crop of the whole image, aspect clamped to ``ratio``
    w, h = width, height
    if in_ratio < min(ratio):
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        w = int(round(h * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(img, strength: float, rng: random.Random):
    """torchvision's ColorJitter(brightness=s, contrast=s, saturation=s) on a PIL image with its draws from ``rng``:
    three factors ~ U(max(0, 1 - s), 1 + s), the adjustments (torchvision's functional ones) in a random order."""
    from torchvision.transforms import functional as TF

    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [rng.uniform(low, high) for _ in range(3)]
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in rng.sample(range(3), 3):
        img = adjust[i](img, factors[i])
    return img


class FolderImages(Dataset):
    """(path, label) samples -> (uint8 [3, size, size], label). Train: ``dataset[(index, epoch)]`` gives a
    RandomResizedCrop + flip (+ ColorJitter when ``color_jitter`` > 0) seeded by (seed, epoch, index); eval:
    ``dataset[index]`` gives resize + center crop."""

    def __init__(self, samples, size, train, seed=0, flip=True, min_scale=0.08, color_jitter=0.0):
        self.samples, self.size, self.train = samples, int(size), bool(train)
        self.seed, self.flip, self.min_scale = int(seed), bool(flip), float(min_scale)
        self.color_jitter = float(color_jitter)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        from torchvision.datasets.folder import default_loader
        from torchvision.transforms import functional as TF

        index, epoch = key if self.train else (key, 0)
        path, label = self.samples[index]
        try:
            img = default_loader(path)  # decodes the whole image (convert("RGB")): truncated files fail here
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            why = " ".join(f"{type(e).__name__}: {e}".split())
            raise DataFileError(f"corrupt image {path!r} ({why}); remove or replace it, then run again "
                                f"(the run resumes from its last checkpoint)") from None
        if self.train:
            rng = random.Random(f"{self.seed}/{epoch}/{index}")  # str seeds are hashed (sha512): stable everywhere
            top, left, h, w = random_resized_crop_params(img.width, img.height, rng, (self.min_scale, 1.0))
            img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
            if self.flip and rng.random() < 0.5:
                img = TF.hflip(img)
            if self.color_jitter > 0:  # drawn after crop and flip: those stay what they are without jitter
                img = color_jitter(img, self.color_jitter, rng)
        else:
            img = TF.center_crop(TF.resize(img, int(self.size * 256 / 224), antialias=True), self.size)
        return TF.pil_to_tensor(img), label


class ShardSampler(Sampler):
    """Train: the (seed, epoch) permutation, positions rank, rank + world_size, ..., N // world_size of them,
    yielded as (index, epoch). Eval: indices rank, rank + world_size, ... in order, no padding.
    ``set_epoch(epoch, skip)`` starts the epoch ``skip`` positions in (a mid-epoch resume); ``len`` stays the
    whole epoch's."""

    def __init__(self, n, shuffle, seed=0, rank=0, world_size=1):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        """Shuffle for ``epoch`` and start ``skip`` batches into it (a mid-epoch resume)."""
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self):
        return self.n // self.world_size if self.shuffle else len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.world_size))
        perm = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        mine = perm[self.rank::self.world_size][:len(self)][self.skip:].tolist()
        return iter([(i, self.epoch) for i in mine])


class DeviceLoader:
    """A DataLoader of uint8 batches -> normalized float32 batches on ``device``, with ``len`` and ``set_epoch``."""

    def __init__(self, loader: DataLoader, sampler: ShardSampler, device: torch.device, mean, std):
        self.loader, self.sampler, self.device = loader, sampler, device
        mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Epoch ``epoch`` from its batch ``start_batch`` on (the batches before it are not decoded)."""
        self.sampler.set_epoch(epoch, start_batch * self.loader.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True).float().mul_(self.scale).add_(self.shift)
            yield x, y.to(self.device, non_blocking=True)


def _samples(folder: Path, class_to_idx, allow_empty):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        return make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=allow_empty)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"ImageNet folder {str(folder)!r} is incomplete ({' '.join(str(e).split())})") from None


def imagenet_loaders(cfg, batch_size, eval_batch_size, device, seed, rank=0, world_size=1, val_fraction=0.0,
                     train_limit=None):
    """(train, test, val, num_classes, num_train, num_test, num_val) for the ImageFolder tree under ``cfg.root``;
    val (None when ``val_fraction`` is 0) is the stratified subset of train/ held out, with the eval transform."""
    root = Path(str(required(cfg, "root")))
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(f"ImageNet folder {str(root / split)!r} not found; set dataset.root=<dir> holding "
                              f"train/<class>/*.JPEG and val/<class>/*.JPEG (ImageFolder layout)")
    from torchvision.datasets.folder import find_classes

    try:
        classes, class_to_idx = find_classes(str(root / "train"))
    except FileNotFoundError:
        raise ConfigError(f"ImageNet folder {str(root / 'train')!r} has no <class>/ subfolders") from None
    train_samples = _samples(root / "train", class_to_idx, allow_empty=False)
    val_samples = _samples(root / "val", class_to_idx, allow_empty=True)
    if not val_samples:
        raise ConfigError(f"ImageNet folder {str(root / 'val')!r} has no images in <class>/ subfolders named as in "
                          f"train/ (ImageFolder layout; sort a flat val/ into class folders first)")
    size, workers = int(required(cfg, "image_size")), int(required(cfg, "num_workers"))
    flip, min_scale = bool(required(cfg, "flip")), float(required(cfg, "min_scale"))
    drop_last, jitter = bool(required(cfg, "drop_last")), float(required(cfg, "color_jitter"))

    def loader(samples, bs, train):
        ds = FolderImages(samples, size, train, seed, flip, min_scale, jitter)
        sampler = ShardSampler(len(ds), train, seed, rank, world_size)
        # its own generator: a DataLoader draws its workers' base seed from the global torch RNG at every new
        # iterator otherwise, which would shift dropout's random stream after a (mid-epoch) resume
        dl = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=train and drop_last,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(int(seed)))
        return DeviceLoader(dl, sampler, device, IMAGENET_MEAN, IMAGENET_STD)

    held_samples = []
    if val_fraction > 0:
        keep, held = stratified_split(split_labels_of(train_samples), val_fraction)
        train_samples, held_samples = [train_samples[i] for i in keep], [train_samples[i] for i in held]
    if train_limit:
        train_samples = train_samples[:train_limit]
    train, test = loader(train_samples, batch_size, True), loader(val_samples, eval_batch_size, False)
    held = loader(held_samples, eval_batch_size, False) if held_samples else None
    return train, test, held, len(classes), len(train_samples), len(val_samples), len(held_samples)
