"""ImageNet through torchvision's ImageFolder (``root/train/<class>/*``, ``root/val/<class>/*``) and a DataLoader
with workers, pinned memory and a DistributedSampler (also for one process: it gives seeded per-epoch shuffling)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from normrepro.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeviceLoader:
    """A DataLoader whose batches land on ``device`` (non-blocking), with ``len`` and ``set_epoch``."""

    def __init__(self, loader: DataLoader, sampler: DistributedSampler, device: torch.device):
        self.loader, self.sampler, self.device = loader, sampler, device

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def imagenet_loaders(cfg, batch_size, eval_batch_size, device, seed, rank=0, world_size=1):
    from torchvision import datasets, transforms as T

    root = Path(cfg.get("root", "data/imagenet"))
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(f"ImageNet folder {str(root / split)!r} not found; set dataset.root=<dir> holding "
                              f"train/<class>/*.JPEG and val/<class>/*.JPEG (ImageFolder layout)")
    size = int(cfg.get("image_size", 224))
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])
    train_ds = datasets.ImageFolder(str(root / "train"), train_tf)
    val_ds = datasets.ImageFolder(str(root / "val"), eval_tf)
    workers = int(cfg.get("num_workers", 8))

    def loader(ds, bs, train):
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                     drop_last=train)
        dl = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=train,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        return DeviceLoader(dl, sampler, device)

    return (loader(train_ds, batch_size, True), loader(val_ds, eval_batch_size, False), len(train_ds.classes),
            len(train_ds), len(val_ds))
