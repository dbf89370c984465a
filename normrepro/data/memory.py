"""In-memory data path (airbench style): the whole set as a uint8 tensor on the training device,
random crop + flip + normalization done on whole batches there.

Shuffling and augmentation draw from a CPU ``torch.Generator`` seeded by (seed, epoch), so a run resumed
at epoch e sees exactly the batches an uninterrupted run sees, on any device.
"""
from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def batch_crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``padded[i, :, dy[i]:dy[i]+size, dx[i]:dx[i]+size]`` for every image i, vectorized."""
    n, c, _, _ = padded.shape
    ar = torch.arange(size, device=padded.device)
    rows = (dy.to(padded.device)[:, None] + ar)[:, None, :, None]  # n,1,size,1
    cols = (dx.to(padded.device)[:, None] + ar)[:, None, None, :]  # n,1,1,size
    idx_n = torch.arange(n, device=padded.device)[:, None, None, None]
    idx_c = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


class InMemoryLoader:
    """Batches of (normalized float32 images, int64 labels) from a uint8 [N,C,H,W] tensor on the device.

    Train mode: a fresh permutation per epoch (sliced by rank), random crop from the zero-padded image
    (``pad``) and random horizontal flip (``flip``). Eval mode (shuffle=False): every image once, in order.
    """

    def __init__(self, images, labels, batch_size, mean, std, shuffle=False, pad=0, flip=False, seed=0,
                 drop_last=False, rank=0, world_size=1):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.pad, self.flip = int(batch_size), shuffle, int(pad), bool(flip)
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
        self.padded = torch.nn.functional.pad(images, (pad,) * 4) if shuffle and pad > 0 else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self, gen) -> torch.Tensor:
        n = self.images.shape[0]
        if self.shuffle:
            perm = torch.randperm(n, generator=gen)
            per_rank = n // self.world_size
            return perm[self.rank * per_rank:(self.rank + 1) * per_rank]
        return torch.arange(self.rank, n, self.world_size)

    def _num_items(self) -> int:
        n = self.images.shape[0]
        return n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._num_items()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch)
        idx = self._indices(gen)
        size = self.images.shape[-1]
        for b in range(len(self)):
            bi = idx[b * self.batch_size:(b + 1) * self.batch_size]
            bi_dev = bi.to(self.images.device, non_blocking=True)
            if self.padded is not None:
                dy = torch.randint(0, 2 * self.pad + 1, (len(bi),), generator=gen)
                dx = torch.randint(0, 2 * self.pad + 1, (len(bi),), generator=gen)
                x = batch_crop(self.padded[bi_dev], dy, dx, size)
            else:
                x = self.images[bi_dev]
            if self.shuffle and self.flip:
                mask = (torch.rand(len(bi), generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
                x = torch.where(mask, x.flip(3), x)
            yield (x.float() - self.mean) / self.std, self.labels[bi_dev]
