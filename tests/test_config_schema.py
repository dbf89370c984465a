"""The typed config (issue 12 point 4, 7): every bad value is one ``error:`` line naming the key, exit 2, before
Hydra writes anything; every shipped config passes; the schema matches the torch-side registries."""
import os
import subprocess
import sys

import pytest

from normrepro.errors import ConfigError
from tests.helpers.config import REPO, TINY, compose_cfg, group_options


def check_config(cfg):
    from normrepro.config_check import check_config as check  # imported here: the base code lacks it

    return check(cfg)


def train_py(args, run_dir, timeout=120):
    """``python train.py <args> hydra.run.dir=<run_dir>`` with Hydra's short error mode (as a user sees it)."""
    return subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def assert_one_error_line(proc, *needles):
    """Exit 2, stderr exactly one line ``error: ...`` containing every needle, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# (override(s), text the error line must contain): issue 12 point 4 (crashes, then silent passes), point 7,
# unknown keys, Hydra's own errors
BAD_VALUES = [
    ("train.epochs=abc", "train.epochs must be an integer >= 0, got 'abc'"),
    ("train.batch_size=abc", "train.batch_size must be an integer >= 1, got 'abc'"),
    ("optim.lr=abc", "optim.lr must be a finite number > 0, got 'abc'"),
    ("seed=-1", "seed must be an integer in [0, 2^32 - 1], got -1"),
    ("seed=abc", "seed must be an integer in [0, 2^32 - 1], got 'abc'"),
    ("train.label_smoothing=2", "train.label_smoothing must be a number in [0, 1), got 2"),
    ("train.num_threads=-1", "train.num_threads must be null or an integer >= 1, got -1"),
    ("dataset.image_size=0", "dataset.image_size must be an integer >= 1, got 0"),
    ("optim.momentum=-1", "optim.momentum must be a number in [0, 1), got -1"),
    ("train.grad_clip=abc", "train.grad_clip must be a finite number >= 0, got 'abc'"),
    ("optim.schedule.milestones=abc", "optim.schedule.milestones must be a list of numbers >= 0"),
    ("train.epochs=1.5", "train.epochs must be an integer >= 0, got 1.5"),
    ("train.batch_size=1.5", "train.batch_size must be an integer >= 1, got 1.5"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.weight_decay=-1", "optim.weight_decay must be a finite number >= 0, got -1"),
    ("optim.momentum=5", "optim.momentum must be a number in [0, 1), got 5"),
    ("train.grad_clip=-1", "train.grad_clip must be a finite number >= 0, got -1"),
    ("optim.schedule.milestones=[0.75,0.5]", "optim.schedule.milestones must be increasing"),
    ("optim.schedule.milestones=[8,3]", "optim.schedule.milestones must be increasing"),
    ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch must be null or an integer >= 1, got 0"),
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps must be an integer >= 0, got -1"),
    ("train.checkpoint_every_steps=abc", "train.checkpoint_every_steps must be an integer >= 0, got 'abc'"),
    ("precision=fp16 optim.lr=70000", "optim.lr must be <= 65504"),
    ("+train.epoch=3", "unknown config key 'train.epoch'; train has: batch_size"),
    ("+foo=1", "unknown config key 'foo'; the top level has:"),
    ("+norm.bogus=1", "unknown config key 'norm.bogus'; norm has:"),
    ("norm.name=l3", "unknown norm 'l3'; choose one of: l1, l2"),
    ("norm=bogus", "unknown norm option 'bogus'; choose norm= one of: bwn, bwn_gain, l1, l2"),
    ("experiment=nope", "unknown experiment option 'nope'; choose experiment= one of: bwn_digits"),
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("train.epochs=[", "cannot parse override 'train.epochs=['"),
    ("norm=l1,l2", "Ambiguous value for argument 'norm=l1,l2'"),
    # issue 11: the recipe and its keys
    ("recipe=bogus", "unknown recipe option 'bogus'; choose recipe= one of: authors, default"),
    ("model.init=bogus", "model.init must be one of: he, torch_default, got 'bogus'"),
    ("optim.wd_zero_epoch=-1", "optim.wd_zero_epoch must be null or a number >= 0 (an epoch; a value < 1 is a "
                               "fraction of train.epochs), got -1"),
    ("train.classifier_penalty=-1", "train.classifier_penalty must be a finite number >= 0, got -1"),
    ("dataset=cifar10 +dataset.color_jitter=0.4", "unknown config key 'dataset.color_jitter'; dataset has:"),
    ("dataset=imagenet dataset.color_jitter=-1", "dataset.color_jitter must be a finite number >= 0, got -1"),
]


@pytest.fixture(scope="module")
def bad_value_runs(tmp_path_factory):
    """Every BAD_VALUES command, run as subprocesses 4 at a time (each takes ~1 s: no torch import)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(4) as pool:
        # after TINY: a bad value that slipped through would train only briefly (and fail the test)
        procs = pool.map(lambda i: train_py([*TINY, *BAD_VALUES[i][0].split()], root / f"run{i}"),
                         range(len(BAD_VALUES)))
        return root, list(procs)


@pytest.mark.parametrize("i", range(len(BAD_VALUES)), ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_one_error_line(bad_value_runs, i):
    root, procs = bad_value_runs
    assert_one_error_line(procs[i], BAD_VALUES[i][1])
    assert not (root / f"run{i}").exists()  # checked before Hydra creates the run dir


def test_bad_value_in_a_sweep_stops_before_any_job(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "-m", "optim.lr=0.1,abc", "train.epochs=1",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert_one_error_line(proc, "sweep job", "optim.lr=abc", "optim.lr must be a finite number > 0, got 'abc'")
    assert not any((tmp_path / "sweep").glob("*/metrics.json"))


def group_and_experiment_options():
    """Every option of every top-level group (bases excluded); a WD/LR arm within its experiment."""
    for option in group_options():
        if "/" not in option.split("=")[0]:
            yield [option] if not option.startswith("wd_arm=") else ["experiment=wd_lr_digits_vgg11", option]


@pytest.mark.parametrize("overrides", list(group_and_experiment_options()), ids=" ".join)
def test_every_shipped_config_passes_the_schema(overrides):
    check_config(compose_cfg(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["model=wrn", "model.depth=12"], "model.depth must be 6n+4"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
    (["optim.mode=lr_correction"], "optim.mode=lr_correction needs optim.reference"),
    (["dataset.mean=[0.5,0.5]"], "dataset.mean must have one value per channel (1)"),
    (["optim.schedule.milestones=[1,abc]"], "optim.schedule.milestones[1] must be a finite number >= 0, got 'abc'"),
    (["logger=wandb", "logger.mode=loud"], "logger.mode must be null or one of: online, offline, disabled"),
    (["dataset=cifar100", "dataset.num_classes=10"], "dataset.num_classes must be one of: 100, got 10"),
    (["precision=amp", "precision.init_scale=0"], "precision.init_scale must be a finite number > 0, got 0"),
    (["train.resume=maybe"], "train.resume must be true or false, got 'maybe'"),
    (["~norm"], "norm is missing (required)"),
])
def test_schema_rules(overrides, message):
    with pytest.raises(ConfigError) as e:
        check_config(compose_cfg(overrides))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_pure_fp16_lr_limit_depends_on_master_weights():
    check_config(compose_cfg(["precision=fp16", "optim.lr=65504"]))
    check_config(compose_cfg(["precision=fp16", "precision.master_weights=true", "optim.lr=70000"]))
    check_config(compose_cfg(["precision=fp32", "optim.lr=70000"]))
    with pytest.raises(ConfigError, match="optim.weight_decay must be <= 65504"):
        check_config(compose_cfg(["precision=fp16", "optim.weight_decay=1e5"]))


def test_schema_matches_the_torch_side_registries():
    """The schema imports no torch, so it lists the choices itself: they must equal the factories' own."""
    from normrepro.config_schema import CHOICES, Config, ModelBase
    from normrepro.data import DATASET_NAMES
    from normrepro.loggers import LOGGERS
    from normrepro.models import INITS as MODEL_INITS
    from normrepro.models import MODEL_NAMES, model_kwargs
    from normrepro.models.weight_norm import INITS, KINDS, WEIGHT_NORM_KEYS
    from normrepro.norms import NORM_OPTIONS
    from normrepro.optim import SCHEDULES, WD_POLICIES
    from normrepro.optim.build import OPTIMIZERS
    from normrepro.optim.wd_lr import CORRECTIONS, MODES, REFERENCE_EPOCHS
    from normrepro.precision import PRECISIONS
    from normrepro.trainer import DEVICES

    assert set(CHOICES["norm"]) == set(NORM_OPTIONS)
    for name, schema in CHOICES["norm"].items():
        assert set(schema.model_fields) - {"name"} == set(NORM_OPTIONS[name]), name
    assert set(CHOICES["model"]) == set(MODEL_NAMES)
    for name, schema in CHOICES["model"].items():
        assert set(schema.model_fields) - {"name", "init", *WEIGHT_NORM_KEYS} == set(model_kwargs(name)), name
    assert set(CHOICES["dataset"]) == set(DATASET_NAMES)
    assert set(CHOICES["precision"]) == set(PRECISIONS)
    assert set(CHOICES["logger"]) == set(LOGGERS) and set(CHOICES["optim"]) == set(OPTIMIZERS)
    fields = CHOICES["optim"]["sgd"].model_fields
    literal = lambda f: set(f.annotation.__args__)  # noqa: E731
    assert literal(fields["wd_policy"]) == set(WD_POLICIES) and literal(fields["mode"]) == set(MODES)
    assert literal(fields["correction"]) == set(CORRECTIONS)
    assert literal(fields["reference_epoch"]) == set(REFERENCE_EPOCHS)
    assert literal(CHOICES["optim"]["sgd"].model_fields["schedule"].annotation.model_fields["name"]) == set(SCHEDULES)
    assert literal(Config.model_fields["device"]) == set(DEVICES)
    assert literal(ModelBase.model_fields["weight_norm"]) == set(KINDS)
    assert set(ModelBase.model_fields["bwn_init"].annotation.__args__[0].__args__) == set(INITS)
    assert literal(ModelBase.model_fields["init"]) == set(MODEL_INITS)


def test_schema_imports_no_torch():
    code = "import sys, normrepro.config_check, normrepro.preflight; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
