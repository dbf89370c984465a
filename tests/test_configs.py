"""The config tree composes: every group option, the norm shorthands, the regimes and the WD/LR arms."""
import pytest
from omegaconf import OmegaConf

from normrepro.norms import norm_factory
from normrepro.trainer import fit
from tests.helpers.config import TINY, compose_cfg, group_options

# docs/paper.md §2: (epochs, batch, lr, weight decay, wd_policy, LR milestones)
REGIMES = {"cifar_164": (164, 128, 0.1, 1e-4, "all", [81, 122]),
           "imagenet_90": (90, 256, 0.1, 1e-4, "all", [30, 60]),
           "wd_lr_80": (80, 128, 0.1, 5e-4, "wd_on", [20, 40, 60]),
           "bwn_90": (90, 256, 0.2, 1e-4, "classifier", [30, 60]),
           "fp16_120": (120, 256, 0.1, 1e-4, "all", [60, 75])}
ARMS = {"wd_on": ("wd_on", "standard"), "wd_off": ("wd_off", "standard"),
        "lr_correction": ("wd_off", "lr_correction"), "norm_schedule": ("wd_off", "norm_schedule")}


@pytest.mark.parametrize("override", group_options())
def test_every_config_composes(override):
    cfg = compose_cfg([override])
    assert cfg.model.name and cfg.dataset.name and cfg.norm.name


@pytest.mark.parametrize("override", group_options("norm"))
def test_norm_holds_only_the_layer_options(override):
    """``norm`` is the norm layer alone: its keys minus ``name`` are exactly options the norm factory accepts."""
    cfg = compose_cfg([override])
    options = {k: v for k, v in OmegaConf.to_container(cfg.norm).items() if k != "name"}
    assert norm_factory(cfg.norm.name, **options)(4) is not None
    assert "sync" not in cfg.norm and "weight_norm" not in cfg.norm


@pytest.mark.parametrize("kind", ["bwn", "wn", "bwn_gain"])
def test_weight_norm_shorthands(kind):
    """norm=<kind> is norm=mean weight_norm=<kind>; an explicit weight_norm still wins over the shorthand."""
    short, long = compose_cfg([f"norm={kind}"]), compose_cfg(["norm=mean", f"weight_norm={kind}"])
    assert OmegaConf.to_container(short) == OmegaConf.to_container(long)
    assert (short.norm.name, short.model.weight_norm) == ("mean", kind)
    assert compose_cfg([f"norm={kind}", "weight_norm=none"]).model.weight_norm == "none"
    assert compose_cfg(["norm=l1"]).model.weight_norm == "none"


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_regime_sets_the_papers_recipe_and_trains(regime, tmp_path):
    cfg = compose_cfg([f"regime={regime}"])
    o = cfg.optim
    got = (cfg.train.epochs, cfg.train.batch_size, o.lr, o.weight_decay, o.wd_policy, list(o.schedule.milestones))
    assert got == REGIMES[regime]
    assert group_options("regime") == [f"regime={r}" for r in sorted(REGIMES)]
    result = fit(compose_cfg([f"regime={regime}", *TINY, "train.max_steps_per_epoch=1"]), tmp_path)
    assert result["status"] == "completed" and result["epochs"][0]["train_images"] == 64


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_wd_arm_sets_the_arm_and_its_run_dir(arm):
    cfg = compose_cfg(["experiment=wd_lr_cifar10_vgg11", f"wd_arm={arm}", "seed=2"])
    assert (cfg.experiment.name, cfg.experiment.arm) == ("wd_lr_cifar10_vgg11", arm)
    assert (cfg.optim.wd_policy, cfg.optim.mode) == ARMS[arm]
    reference = "multirun/wd_lr_cifar10_vgg11/wd_on/seed2" if arm in ("lr_correction", "norm_schedule") else None
    assert cfg.optim.reference == reference
    assert (cfg.train.epochs, cfg.optim.weight_decay) == (80, 5e-4)  # regime wd_lr_80 under every arm
    assert compose_cfg(["experiment=wd_lr_cifar10_vgg11"]).experiment.arm == "wd_on"  # the default arm
    digits = compose_cfg(["experiment=wd_lr_digits_vgg11", f"wd_arm={arm}"])
    assert (digits.dataset.name, digits.experiment.arm, digits.train.epochs) == ("digits", arm, 20)
