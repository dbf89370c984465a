"""Entry point behind ``train.py``: resolve the config, write it to the run dir, train, map user errors to one line."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from normrepro.errors import ConfigError
from normrepro.utils.io import atomic_write_text


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def main(cfg: DictConfig) -> float | None:
    """Train one run; returns its final test accuracy (for Hydra sweepers). Bad input: ``error: ...``, exit 2."""
    from normrepro.trainer import fit

    try:
        run_dir = run_dir_of(cfg)
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        atomic_write_text(run_dir / "config.yaml", resolved)
        result = fit(cfg, run_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    final = result["final"]
    print(f"{result['status']}: test_acc {final['test_acc']} best {final['best_test_acc']} "
          f"after {final['epochs_done']} epochs -> {run_dir / 'metrics.json'}")
    return final["test_acc"]
