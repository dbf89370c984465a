"""In-memory data path (airbench style): the whole set as a uint8 [N, C, H, W] tensor on the training device;
random crop + flip + normalization are done on whole batches there.

All random numbers (permutation, crop offsets, flips) come from a CPU ``torch.Generator`` seeded by
(seed, epoch), drawn once per epoch and moved to the device in one transfer: a run resumed at epoch e sees
exactly the batches an uninterrupted run sees, on any device; ``set_epoch(epoch, start_batch)`` starts an epoch at a
batch of that plan (a mid-epoch resume). Each random number belongs to a position of the
global permutation, and rank r takes positions r, r + world_size, ...: with a per-process batch of B/world_size,
the ranks' batch b together is exactly the single-process batch b of size B.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mix_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from integers (seed, epoch, ...); any ints, negative ones included."""
    return int(np.random.SeedSequence([int(v) % 2**64 for v in values]).generate_state(1, np.uint64)[0])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for one epoch's shuffling and augmentation."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch))


def batch_crop(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size, flip: torch.Tensor | None = None):
    """``images[i, :, dy[i]:dy[i]+h, dx[i]:dx[i]+w]`` for every i (mirrored left-right where ``flip[i]``),
    as one gather over the flattened pixels. ``images`` is [n, C, H, W] of any dtype; ``size`` is h or (h, w)."""
    n, c, height, width = images.shape
    h, w = (size, size) if isinstance(size, int) else size
    dev = images.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # n, h
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip is not None:
        cols = torch.where(flip.to(dev)[:, None], w - 1 - cols, cols)
    cols = dx.to(dev)[:, None] + cols  # n, w
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, height * width).gather(2, index).view(n, c, h, w)


class InMemoryLoader:
    """Batches of (normalized float32 images, int64 labels) from a uint8 [N, C, H, W] tensor on its device.

    ``shuffle``: a fresh permutation per epoch; each rank keeps N // world_size positions of it (equal batch
    counts for DDP). Without shuffle: images rank, rank + world_size, ... in order, none dropped.
    ``pad``/``flip``: random crop from the zero-padded image (torchvision RandomCrop(padding=pad)) and random
    horizontal flip with probability 1/2. ``mean``/``std`` are per channel, in [0, 1] pixel units.
    """

    def __init__(self, images, labels, batch_size, mean, std, shuffle=False, pad=0, flip=False, seed=0,
                 drop_last=False, rank=0, world_size=1):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.pad, self.flip = int(batch_size), bool(shuffle), int(pad), bool(flip)
        self.seed, self.drop_last, self.rank, self.world_size = int(seed), bool(drop_last), int(rank), int(world_size)
        dev = images.device
        mean = torch.tensor([float(m) for m in mean], dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        std = torch.tensor([float(s) for s in std], dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std  # x_float = uint8 * scale + shift
        self.padded = F.pad(images, (self.pad,) * 4) if self.pad > 0 else images
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch whose shuffle and augmentation the next iteration draws (from (seed, epoch)), from its batch
        ``start_batch`` on (a mid-epoch resume: the same plan, its first batches not built)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _num_items(self) -> int:
        n = self.images.shape[0]
        return n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._num_items()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_plan(self):
        """(order, dy, dx, flip) for this rank's positions this epoch, on the device (augmentation ones None)."""
        n, gen = self.images.shape[0], epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        dy = dx = flip = None
        if self.pad > 0 or self.flip:
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, n), generator=gen)
            flip = torch.rand(n, generator=gen) < 0.5 if self.flip else None
        mine = slice(self.rank, self.rank + self.world_size * self._num_items(), self.world_size)
        dev = self.images.device
        return [None if t is None else t[mine].to(dev, non_blocking=True) for t in (order, dy, dx, flip)]

    def __iter__(self):
        order, dy, dx, flip = self._epoch_plan()
        size = tuple(self.images.shape[-2:])
        for b in range(self.start_batch, len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[part]
            if dy is None:
                x = self.images.index_select(0, idx)  # index_select: row copies, much faster than x[idx] on CPU
            else:
                crop_flip = None if flip is None else flip[part]
                x = batch_crop(self.padded.index_select(0, idx), dy[part], dx[part], size, crop_flip)
            yield x.float().mul_(self.scale).add_(self.shift), self.labels.index_select(0, idx)
