"""Helpers shared by the benchmark scripts (scripts/bench_norms.py, scripts/bench_train.py) and memory tests."""
from __future__ import annotations

import torch


def keep_freed_memory() -> bool:
    """glibc only: keep freed buffers mapped (mallopt M_TRIM_THRESHOLD / M_MMAP_THRESHOLD raised) so that timed
    iterations do not pay page faults for fresh buffers. Without it, CPU timings of every layer, BatchNorm2d
    included, swing by 2-4x with the allocator's trimming luck. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1
        return ok and libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    except (OSError, AttributeError):
        return False


def bench_devices(choice: str) -> list[torch.device] | None:
    """The devices of ``--device all|cpu|cuda`` (``all``: the CPU, and CUDA when present); None when ``cuda``
    was asked for and there is none."""
    devices = [torch.device("cpu")] if choice in ("all", "cpu") else []
    if choice in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif choice == "cuda":
            return None
    return devices


def saved_bytes(module, x) -> int:
    """Bytes of the tensors autograd saves for the backward of one training forward of ``module(x)``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total
