"""Triton kernels of the norm primitives (CUDA; on the CPU through Triton's interpreter with TRITON_INTERPRET=1).

The six functions of the primitive API (``channel_sums``, ``dev_stats``, ``topk_dev``, ``normalize``,
``grad_sums``, ``input_grad``) with the signatures the torch and C++ backends share, so that the registered norm
operators compose them (statistics as per-channel partial sums, finalized in torch), and the optional
``scatter_add`` (Top-k backward: the weights at the selected values). Importing this package never fails and
imports no triton; ``available(device)`` / ``unavailable_reason(device)`` say whether a launch can run now, and a
launch that cannot raises ``ConfigError`` naming the backend and what to use instead. TRITON_INTERPRET is read at
each launch (runtime.py: triton itself reads it at import and at decoration, and how this package copes).

Design (tiles.py has the numbers):
- A tensor is seen as (A, C, B) at any strides (NCHW: (N, C, H·W); channels_last: (N·H·W, C, 1); (N, C):
  (N, C, 1)). A program covers a 3-D tile (BA, BC, BB), long along the unit-stride axis so that loads coalesce and
  vectorise: NCHW tiles along B (BB up to 2048 float32 / 4096 half values, BC = 1, BA fills the rest), channels_last
  along C (BC = 64 float32 / 128 half channels = 256 bytes per row, BA = 32 / 32 rows). Other strides: up to 16
  along both B and C.
- Reductions (channel_sums, dev_stats, grad_sums) run about 4 programs per SM, each looping over ``iters`` tiles
  along A with elementwise accumulators, and write one partial per program and channel to a (P, C) buffer per
  statistic that torch sums (or max-reduces): deterministic, no atomics. Elementwise passes (normalize,
  input_grad) use the same tiles with 8× more programs.
- topk_dev: one tile per program, 1024 values of a channel (NCHW: BC = 1; channels_last: 8 channels × 1024 rows),
  k rounds of (max |d|, first position holding it) give k candidates per tile and channel; torch.topk merges the
  (C, P·k) candidates. NaN ranks above inf (as in torch.topk); positions outside the tensor rank below 0.
- Dtypes: loads convert to the compute dtype cd; elementwise math runs in cd (float16 squares overflow to inf once
  |d| > 255.9, as the paper's naive fp16 L2), bfloat16 as float32 rounded to bfloat16 after each operation
  (identical results); sums accumulate in float32 (float64 for float64, which the interpreter and CUDA support).

Memory traffic (activation-sized; per-channel vectors and partials are O(programs·C) and left out), numel values
of e_x (x), e_dy (dy), e_out (out) bytes:
    channel_sums, dev_stats (any subset of the four statistics: one pass), topk_dev: read numel·e_x
        (topk_dev writes k/1024 of the values again as candidates: key, d, index)
    normalize:   read numel·e_x,  write numel·e_out
    grad_sums:   read numel·(e_x + e_dy)
    input_grad:  read numel·(e_dy [+ e_x when kd or ks is given]),  write numel·e_out
    scatter_add: read and write C·k values (the nonzero weights)
``tiles.primitive_bytes`` and ``tiles.layer_bytes`` compute these (a composed l1/l2 forward+backward: 9 passes over
the activation, linf/topk 8, mean 6) for the bandwidth bound printed beside the GPU benchmarks.
"""
from __future__ import annotations

from normrepro.norms.triton_kernels.primitives import (
    channel_sums,
    dev_stats,
    grad_sums,
    input_grad,
    normalize,
    scatter_add,
    topk_dev,
)
from normrepro.norms.triton_kernels.runtime import available, interpreting, unavailable_reason
from normrepro.norms.triton_kernels.tiles import layer_bytes, primitive_bytes

__all__ = ["channel_sums", "dev_stats", "topk_dev", "normalize", "grad_sums", "input_grad", "scatter_add", "available",
           "unavailable_reason", "interpreting", "primitive_bytes", "layer_bytes"]
