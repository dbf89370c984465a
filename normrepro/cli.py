"""Entry point behind ``train.py``: resolve the config, write it to the run dir, train, map user errors to one line."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from normrepro.errors import ConfigError
from normrepro.utils.io import atomic_write_text


def run_dir_of(cfg: DictConfig) -> Path:
    """The Hydra run dir. Under torchrun every rank must see the same one, so it must be given explicitly (the
    default contains the start time, which can differ between ranks by a second)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and hc.mode.name == "RUN" and not any(
            o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hc.overrides.hydra):
        raise ConfigError("under torchrun pass hydra.run.dir=<dir> so that all ranks share one run dir")
    return Path(hc.runtime.output_dir)


def main(cfg: DictConfig) -> float | None:
    """Train one run; returns its final test accuracy (for Hydra sweepers). Bad input: ``error: ...``, exit 2."""
    from normrepro.trainer import fit

    try:
        import os

        run_dir = run_dir_of(cfg)
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        if os.environ.get("RANK", "0") == "0":
            atomic_write_text(run_dir / "config.yaml", resolved)
        result = fit(cfg, run_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if "final" not in result:  # not rank 0 under torchrun
        return None
    final = result["final"]
    print(f"{result['status']}: test_acc {final['test_acc']} best {final['best_test_acc']} "
          f"after {final['epochs_done']} epochs -> {run_dir / 'metrics.json'}")
    return final["test_acc"]
