#!/usr/bin/env python
"""Float16 probe of the normalization layers (issue 4, item 1): for each norm and pre-norm scale K, run the
real layer in float16 (training mode) on K * Gaussian activations and compare it with the same layer in
float64: fraction of non-finite outputs, collapsed channels, relative error of the scale estimate.
Writes results/fp16_probe.{md,csv,png}. The logic lives in normrepro/experiments/fp16_probe.py.

    python scripts/fp16_probe.py
    python scripts/fp16_probe.py --norms l2_lp,l1 --scales 1,100,10000 --shape 64,32,8,8 --out-dir /tmp/p
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from normrepro.errors import ConfigError  # noqa: E402
from normrepro.experiments import fp16_probe as P  # noqa: E402


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--norms", default=",".join(P.DEFAULT_NORMS),
                   help=f"comma-separated, from: {', '.join(P.DEFAULT_NORMS)} (default: all)")
    p.add_argument("--scales", default=",".join(f"{k:g}" for k in P.DEFAULT_SCALES),
                   help="comma-separated pre-norm scales K")
    p.add_argument("--shape", default=",".join(map(str, P.DEFAULT_SHAPE)), help="N,C,H,W (or N,C)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread", type=float, default=4.0, help="channel stds log-uniform in [1/spread, 1]")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "results"))
    p.add_argument("--stem", default="fp16_probe", help="output file names: STEM.md, STEM.csv, STEM.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        norms = P.parse_norms(args.norms)
        scales = P.parse_scales(args.scales)
        try:
            shape = tuple(int(s) for s in args.shape.split(","))
        except ValueError:
            raise ConfigError(f"bad --shape {args.shape!r}: want N,C,H,W or N,C integers") from None
        if not args.spread >= 1:
            raise ConfigError(f"bad --spread {args.spread!r}: must be >= 1")
        torch.set_num_threads(max(1, args.threads))
        rows = P.run_probe(norms, scales, shape, seed=args.seed, spread=args.spread, progress=not args.no_progress)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv_shown = sys.argv[1:] if argv is None else list(argv)
    command = "python scripts/fp16_probe.py" + ("" if not argv_shown else " " + shlex.join(argv_shown))
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.machine(),
           "processor": _cpu_name(), "threads": torch.get_num_threads()}
    paths = P.write_results(rows, args.out_dir, args.stem, command, env, shape, args.seed, args.spread)
    print(P.rows_to_markdown(rows, P.SUMMARY_COLUMNS))
    print("\n".join(P.summary_lines(rows)))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
