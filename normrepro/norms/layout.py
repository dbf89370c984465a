"""Memory layouts of norm inputs: every (N, C, *spatial) tensor is seen as a 3-D (A, C, B) view.

Contiguous (N, C, S1, ..., Sk) -> (N, C, S1*...*Sk); channels-last (channel stride 1, the spatial dims in order
outside it, as torch.channels_last / channels_last_3d) -> (N*S1*...*Sk, C, 1); (N, C) -> (N, C, 1). Element
(a, c, b) then sits at (a*C + c)*B + b and the index of a value inside its channel is i = a*B + b.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def is_channels_last(x: Tensor) -> bool:
    """True for a dense channels-last tensor of rank >= 3 that is not also plain contiguous."""
    if x.dim() < 3 or x.is_contiguous():
        return False
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def memory_format(x: Tensor) -> torch.memory_format:
    """torch.channels_last (rank 4) / channels_last_3d (rank 5) for such a tensor, else contiguous_format."""
    if is_channels_last(x):
        if x.dim() == 4:
            return torch.channels_last
        if x.dim() == 5:
            return torch.channels_last_3d
    return torch.contiguous_format


def dense(x: Tensor) -> Tensor:
    """x itself when it is contiguous or channels-last, else a contiguous copy."""
    return x if x.is_contiguous() or is_channels_last(x) else x.contiguous()


def like(t: Tensor, ref: Tensor) -> Tensor:
    """t with the strides of the dense tensor ``ref`` (t itself when they already match)."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref, dtype=t.dtype)
    out.copy_(t)
    return out


def view3(x: Tensor) -> Tensor:
    """The (A, C, B) view of a dense x (see the module docstring)."""
    n, c = x.shape[0], x.shape[1]
    if x.dim() == 2:
        return x.view(n, c, 1)
    if is_channels_last(x):
        return x.permute(0, *range(2, x.dim()), 1).reshape(-1, c).unsqueeze(-1)
    return x.view(n, c, -1)


def geometry(x: Tensor) -> tuple[int, int, int]:
    """(A, C, B) of a dense x as ``view3`` would see it, without building the view."""
    n, c = x.shape[0], x.shape[1]
    rest = x.numel() // max(n * c, 1) if n * c else 0
    if is_channels_last(x):
        return n * rest, c, 1
    return n, c, rest if x.dim() > 2 else 1


def channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector t shaped (1, C, 1, ...) to broadcast against x."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))
