"""Configs as train.py composes them (Hydra's compose API), the tiny run every trainer test starts from, and the
dataset YAMLs."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "normrepro" / "conf"

# ResNet-20 at width 4 on 8x8 digits, 2 steps of 64 images: about a second on the CPU
TINY = ["dataset=digits", "dataset.image_size=8", "model=resnet20", "model.width=4", "train.epochs=1",
        "train.batch_size=64", "train.progress=false", "train.max_steps_per_epoch=2"]


def compose_cfg(overrides=()):
    """The config train.py would see for ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str | None = None) -> list[str]:
    """``group=option`` for every option file below normrepro/conf/ (nested groups too, e.g. hydra/launcher=slurm;
    files starting with ``_`` are shared bases and folders starting with ``_`` hold the parts of an option, e.g.
    recipe/_regime/: neither are options), or only those of ``group``."""
    found = []
    for f in sorted(CONF.glob("*/**/*.yaml")):
        name = f.parent.relative_to(CONF).as_posix()
        hidden = f.stem.startswith("_") or any(part.startswith("_") for part in name.split("/"))
        if not hidden and group in (None, name):
            found.append(f"{name}={f.stem}")
    return found


def dataset_cfg(name: str, **overrides):
    """normrepro/conf/dataset/<name>.yaml (every key the loaders read) with ``overrides`` merged in."""
    cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def group_choices(overrides=()) -> dict:
    """The option each config group got for ``overrides`` (Hydra's runtime choices: {"regime": "cifar_164", ...})."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.runtime.choices)
