"""Tile shapes and grids of the Triton norm kernels, and the bytes each primitive moves.

A kernel program covers a 3-D tile (BA, BC, BB) of the (A, C, B) view and, for the reductions and elementwise
passes, ``iters`` such tiles one after another along A. The tile is long along the axis of unit stride (NCHW: b;
channels_last and (N, C): c) so that a warp reads consecutive addresses (vectorised, coalesced), and fills the rest
of its budget along A (the axis every channel is reduced over).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

#: bytes of x per tile of the reductions and elementwise kernels (2048 float32, 4096 float16 values)
TILE_BYTES = 8192
#: values of one channel in one top-k tile: each tile keeps k candidates, so k / TOPK_VALUES of x is re-written
TOPK_VALUES = 1024
#: channels of a channels_last top-k tile (a 32-byte memory sector of float32 per row)
TOPK_CHANNELS = 8
#: programs per streaming multiprocessor the reductions aim at (fewer, longer programs: fewer partial sums)
PROGRAMS_PER_SM = 4

_forced: dict | None = None


def pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return 1 << max(0, int(n - 1).bit_length())


@dataclass(frozen=True)
class Plan:
    """Tile (ba, bc, bb), programs along each axis (n_a chunks of ``iters`` tiles, n_c, n_b) and warps."""
    ba: int
    bc: int
    bb: int
    n_a: int
    n_c: int
    n_b: int
    iters: int
    num_warps: int

    @property
    def programs(self) -> int:
        """Programs of the 1-D grid."""
        return self.n_a * self.n_c * self.n_b

    @property
    def partials(self) -> int:
        """Partial results per channel (one per program along A and B)."""
        return self.n_a * self.n_b


@contextlib.contextmanager
def forced(ba: int, bc: int, bb: int, programs: int | None = None):
    """Tests: use this tile (powers of two) and aim at ``programs`` programs, so that small tensors still span
    several programs, loop iterations and partial sums."""
    global _forced
    for v in (ba, bc, bb):
        if v < 1 or v & (v - 1):
            raise ValueError(f"tile sizes must be powers of two, got {(ba, bc, bb)}")
    old, _forced = _forced, dict(ba=ba, bc=bc, bb=bb, programs=programs)
    try:
        yield
    finally:
        _forced = old


def _unit_axis(shape, strides) -> str | None:
    a, c, b = shape
    sa, sc, sb = strides
    if b > 1 and sb == 1:
        return "b"
    if c > 1 and sc == 1:
        return "c"
    if a > 1 and sa == 1:
        return "a"
    return None


def _tile(shape, strides, elem_bytes: int, topk: bool) -> tuple[int, int, int]:
    a, c, b = shape
    axis = _unit_axis(shape, strides)
    if topk:
        budget = TOPK_VALUES
        if axis == "b":
            bb = min(pow2(b), budget)
            return min(pow2(a), max(1, budget // bb)), 1, bb
        if axis == "c":
            return min(pow2(a), budget), min(pow2(c), TOPK_CHANNELS), 1
        bb = min(pow2(b), budget)
        return min(pow2(a), max(1, budget // bb)), 1, bb
    tile = max(1, TILE_BYTES // elem_bytes)
    if axis == "b":
        bb = min(pow2(b), tile)
        return min(pow2(a), max(1, tile // bb)), 1, bb
    if axis == "c":
        bc = min(pow2(c), max(1, 256 // elem_bytes))
        bb = min(pow2(b), max(1, tile // bc))
        return min(pow2(a), max(1, tile // (bc * bb))), bc, bb
    if axis == "a":
        return min(pow2(a), tile), 1, 1
    bb, bc = min(pow2(b), 16), min(pow2(c), 16)
    return min(pow2(a), max(1, tile // (bb * bc))), bc, bb


def _target_programs(device: torch.device, per_sm: int) -> int:
    if device.type == "cuda":
        return per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter runs programs one after another: few and large


def plan(x3: torch.Tensor, kind: str) -> Plan:
    """The plan of a kernel of ``kind`` (``reduce``, ``map`` or ``topk``) over x3 (A, C, B)."""
    shape, strides = tuple(x3.shape), tuple(x3.stride())
    a, c, b = shape
    target = _target_programs(x3.device, PROGRAMS_PER_SM if kind == "reduce" else 8 * PROGRAMS_PER_SM)
    if _forced is not None:
        ba, bc, bb = _forced["ba"], _forced["bc"], _forced["bb"]
        target = _forced["programs"] or target
    else:
        ba, bc, bb = _tile(shape, strides, x3.element_size(), kind == "topk")
    n_c, n_b, a_blocks = math.ceil(c / bc), math.ceil(b / bb), math.ceil(a / ba)
    if kind == "topk":
        iters = 1
    else:
        chunks = max(1, min(a_blocks, math.ceil(target / (n_c * n_b))))
        iters = math.ceil(a_blocks / chunks)
    n_a = math.ceil(a_blocks / iters)
    tile = ba * bc * bb
    num_warps = 8 if tile >= 4096 else 4 if tile >= 1024 else 2 if tile >= 256 else 1
    return Plan(ba, bc, bb, n_a, n_c, n_b, iters, num_warps)


# ------------------------------------------------------------------------------------- memory traffic
def primitive_bytes(name: str, numel: int, x_bytes: int, *, dy_bytes: int = 0, out_bytes: int = 0,
                    with_x: bool = True) -> int:
    """Bytes of activation-sized traffic of one primitive over ``numel`` values (the per-channel vectors and the
    partial sums, O(programs * C), are left out): channel_sums, dev_stats and topk_dev read x once; normalize reads
    x and writes out; grad_sums reads x (unless ``with_x`` is False) and dy; input_grad reads dy, x when kd/ks are
    used (``with_x``), and writes out."""
    reads = {"channel_sums": x_bytes, "dev_stats": x_bytes, "topk_dev": x_bytes,
             "normalize": x_bytes, "grad_sums": dy_bytes + (x_bytes if with_x else 0),
             "input_grad": dy_bytes + (x_bytes if with_x else 0)}
    writes = {"normalize": out_bytes, "input_grad": out_bytes}
    if name not in reads:
        raise ValueError(f"unknown primitive {name!r}")
    return numel * (reads[name] + writes.get(name, 0))


def layer_bytes(norm: str, numel: int, elem_bytes: int) -> int:
    """Activation bytes one training forward+backward of ``norm`` (l1, l2, linf, topk, mean) moves when composed
    from the primitives, x, y, dy and dx all of ``elem_bytes``: forward channel_sums + dev_stats/topk_dev (none
    for mean) + normalize; backward grad_sums + input_grad (x read only where dx depends on d: l1, l2).
    l1/l2: 9, linf/topk: 8, mean: 6 tensor passes; a fused one-pass BatchNorm needs 5 (read x, write y; read x
    and dy, write dx)."""
    if norm not in ("l1", "l2", "linf", "topk", "mean"):
        raise ValueError(f"unknown norm {norm!r}")
    e = elem_bytes
    fwd = primitive_bytes("channel_sums", numel, e) + primitive_bytes("normalize", numel, e, out_bytes=e)
    if norm != "mean":
        fwd += primitive_bytes("topk_dev" if norm in ("linf", "topk") else "dev_stats", numel, e)
    with_x = norm in ("l1", "l2")
    bwd = (primitive_bytes("grad_sums", numel, e, dy_bytes=e, with_x=norm != "mean")
           + primitive_bytes("input_grad", numel, e, dy_bytes=e, out_bytes=e, with_x=with_x))
    return fwd + bwd
