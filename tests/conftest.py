import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "normrepro" / "conf")

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("MPLBACKEND", "Agg")


def compose_cfg(overrides=()):
    """The config train.py would see for ``overrides`` (Hydra's compose API)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


TINY = ["dataset=digits", "dataset.image_size=8", "model=resnet20", "model.width=4", "train.epochs=1",
        "train.batch_size=64", "train.progress=false", "train.max_steps_per_epoch=2"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)
