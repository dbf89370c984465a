"""Constants of the Lp batch norms (docs/paper.md §1.3)."""
from __future__ import annotations

import math

#: L1 -> sigma on Gaussian data: E|x - mu| = sigma * sqrt(2/pi).
C_L1 = math.sqrt(math.pi / 2.0)

#: Numerator of C_Linf(n) = C_LINF_NUM / sqrt(2 ln n) = 1/2 (1 + sqrt(pi ln 4)) / sqrt(2 ln n).
C_LINF_NUM = 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0)))

#: Default k of Top-k batch norm (the paper's Top10: a fixed count, not a fraction of n).
TOPK_DEFAULT = 10


def c_linf(n: int) -> float:
    """C(n) = 1/2 (1 + sqrt(pi ln 4)) / sqrt(2 ln n), for the L-infinity and Top-k scales (n >= 2)."""
    if n < 2:
        raise ValueError(f"C_Linf(n) needs n >= 2 values per channel, got n={n}")
    return C_LINF_NUM / math.sqrt(2.0 * math.log(n))
