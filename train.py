"""Train one model: ``python train.py norm=l1 precision=fp16``; sweep: ``python train.py -m norm=l2,l1 seed=0,1,2``.

Exit codes: 0 completed, 2 bad input (one ``error: ...`` line), 3 diverged, 4 preempted (rerun to resume),
1 a bug (traceback); see normrepro/cli.py.
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="normrepro/conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from normrepro.cli import main as run

    return run(cfg)


if __name__ == "__main__":
    from normrepro.cli import entry

    entry(main)
