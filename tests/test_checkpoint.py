"""Checkpoints and reference files (issue 12 points 1, 2, 6): nothing from a file runs, damaged files are one line,
resuming refuses another config."""
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from normrepro.channel_norms import WEIGHT_NORMS_NAME, load_reference
from normrepro.checkpoint import CKPT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from normrepro.errors import ConfigError
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg

RUN = TINY + ["train.epochs=3", "train.num_threads=1"]  # milestones [0.5, 0.75]: fractions of the epochs


class TouchMarker:
    """Unpickling this calls ``os.mkdir(marker)``: the proof that a loader ran code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch tiny run: (run dir, its resolved config, its checkpoint as loaded)."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg(RUN)
    fit(cfg, run_dir)
    return run_dir, OmegaConf.to_container(cfg, resolve=True), torch.load(run_dir / CKPT_NAME, weights_only=True)


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = {"model": TouchMarker(marker), "epoch": 1}
    if how == "torch.save":
        torch.save(evil, tmp_path / CKPT_NAME)
    else:
        (tmp_path / CKPT_NAME).write_bytes(pickle.dumps(evil, protocol=int(how[-1])))
    # torch's weights_only unpickler names the global it refuses, or stops at an opcode it does not support
    message = r"corrupt checkpoint .*UnpicklingError" if how.endswith("5") else r"refusing checkpoint .*\.mkdir"
    with pytest.raises(ConfigError, match=message + ".*delete it or set train.resume=false"):
        fit(compose_cfg(TINY), tmp_path)
    assert not marker.exists()


def test_crafted_checkpoint_from_the_command_line(tmp_path):
    marker, run_dir = tmp_path / "pwned", tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": TouchMarker(marker)}, run_dir / CKPT_NAME)
    proc = subprocess.run([sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: refusing checkpoint"), proc.stderr
    assert not marker.exists()


def test_crafted_reference_is_refused_and_runs_nothing(tmp_path):
    marker, ref = tmp_path / "pwned", tmp_path / "ref"
    ref.mkdir()
    torch.save({"layers": {"conv1": 4}, "norms": [TouchMarker(marker)]}, ref / WEIGHT_NORMS_NAME)
    with pytest.raises(ConfigError, match="refusing optim.reference file"):
        fit(compose_cfg(TINY + ["optim.mode=lr_correction", f"optim.reference={ref}"]), tmp_path / "run")
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", rng_state())
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def _damage(state, how):
    state = dict(state)
    if how == "no rng":
        del state["rng"]
    elif how == "no scheduler":
        del state["scheduler"]
    elif how == "epoch as str":
        state["epoch"] = "3"
    elif how == "epoch beyond history":
        state["epoch"] = 7
    elif how == "rng.numpy wrong":
        state["rng"] = {**state["rng"], "numpy": {"kind": "MT19937", "keys": torch.zeros(3)}}
    elif how == "model not tensors":
        state["model"] = {"conv1.weight": [1.0, 2.0]}
    elif how == "weight_norms wrong length":
        wn = state["weight_norms"]
        name = next(iter(wn["layers"]))
        state["weight_norms"] = {**wn, "norms": [{**wn["norms"][0], name: torch.ones(1)}]}
    elif how == "not a dict":
        state = [state]
    return state


DAMAGES = [("no rng", "no 'rng' entry"), ("no scheduler", "no 'scheduler' entry"),
           ("epoch as str", "'epoch' is a str, expected a int"), ("epoch beyond history", "epoch 7 but 3 history"),
           ("rng.numpy wrong", "rng.numpy is not an MT19937 state"), ("model not tensors", "model is not a dict of"),
           ("weight_norms wrong length", "weight_norms: epoch boundary 0"), ("not a dict", "expected a dict")]


@pytest.mark.parametrize("how, message", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_checkpoint_is_one_line(trained, tmp_path, how, message):
    _, _, state = trained
    save_checkpoint(tmp_path / CKPT_NAME, _damage(state, how))
    with pytest.raises(ConfigError) as e:
        load_checkpoint(tmp_path / CKPT_NAME)
    assert f"damaged checkpoint '{tmp_path / CKPT_NAME}': {message}" in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint_is_corrupt(trained, tmp_path):
    run_dir, _, _ = trained
    (tmp_path / CKPT_NAME).write_bytes((run_dir / CKPT_NAME).read_bytes()[:5000])
    with pytest.raises(ConfigError, match="corrupt checkpoint .*delete it or set train.resume=false"):
        load_checkpoint(tmp_path / CKPT_NAME)


@pytest.mark.parametrize("how, message", [
    ("wrong length", "not a tensor of 4 channel norms"),
    ("not a tensor", "not a tensor of 4 channel norms"),
    ("missing layer", "does not hold exactly the recorded layers"),
    ("negative", "norms must be finite and >= 0"),
    ("no norms", "expected {layers"),
])
def test_damaged_reference_is_one_line(tmp_path, how, message):
    layers = {"conv1": 4, "layer1.0.conv1": 4}
    norms = [{name: torch.ones(c) for name, c in layers.items()} for _ in range(3)]
    bad = {"wrong length": {**norms[1], "conv1": torch.ones(3)}, "not a tensor": {**norms[1], "conv1": [1.0] * 4},
           "missing layer": {"conv1": torch.ones(4)}, "negative": {**norms[1], "conv1": -torch.ones(4)}}
    ref = {"layers": layers, "norms": [norms[0], bad.get(how, norms[1]), norms[2]]}
    if how == "no norms":
        ref = {"layers": layers}
    torch.save(ref, tmp_path / WEIGHT_NORMS_NAME)
    with pytest.raises(ConfigError, match="optim.reference: damaged") as e:
        load_reference(tmp_path, layers, 2)
    assert message in str(e.value)
    torch.save({"layers": layers, "norms": norms}, tmp_path / WEIGHT_NORMS_NAME)
    assert len(load_reference(tmp_path, layers, 2)) == 3  # the intact file loads


@pytest.mark.parametrize("override, key", [
    ("train.epochs=5", "train.epochs: 3 -> 5"), ("norm=l1", "norm.name: 'l2' -> 'l1'"),
    ("optim.lr=0.05", "optim.lr: 0.1 -> 0.05"), ("seed=1", "seed: 0 -> 1"),
    ("train.batch_size=32", "train.batch_size: 64 -> 32"),
])
def test_resume_refuses_another_config(trained, override, key):
    from normrepro.resume_check import check_resume_config

    run_dir, _, state = trained
    new = OmegaConf.to_container(compose_cfg(RUN + [override]), resolve=True)
    with pytest.raises(ConfigError) as e:
        check_resume_config(state, new, run_dir / CKPT_NAME)
    assert key in str(e.value) and "train.resume=false" in str(e.value) and "hydra.run.dir" in str(e.value)


@pytest.mark.parametrize("override", ["train.num_threads=2", "train.progress=true", "device=cpu",
                                      "train.eval_batch_size=100", "logger.name=none"])
def test_resume_accepts_runtime_keys(trained, override):
    from normrepro.resume_check import RUNTIME_KEYS, check_resume_config

    _, _, state = trained
    new = OmegaConf.to_container(compose_cfg(RUN + [override]), resolve=True)
    check_resume_config(state, new, "ckpt")
    assert any(override.split("=")[0].startswith(k) for k in RUNTIME_KEYS)


def test_longer_run_resumes_when_the_past_schedule_is_unchanged(trained):
    """Milestones [1, 2] in epochs: 3 -> 5 epochs changes no step already done (2 steps/epoch x 3 epochs), so
    the resumed run is a fresh 5-epoch run; moving a milestone, or fractional milestones, change the past."""
    from normrepro.resume_check import check_resume_config, config_differences

    _, saved, state = trained
    absolute = lambda *o: OmegaConf.to_container(compose_cfg(RUN + ["optim.schedule.milestones=[1,2]", *o]),  # noqa
                                                 resolve=True)
    state = {**state, "config": absolute()}
    check_resume_config(state, absolute("train.epochs=5"), "ckpt")
    moved = absolute("train.epochs=5", "optim.schedule.milestones=[1,3]")
    assert [k for k, _, _ in config_differences(state["config"], moved)] == ["optim.schedule.milestones",
                                                                              "train.epochs"]
    with pytest.raises(ConfigError, match="optim.schedule.milestones"):
        check_resume_config(state, moved, "ckpt")
    cosine = {**state, "config": absolute("optim.schedule.name=cosine")}
    with pytest.raises(ConfigError, match="train.epochs: 3 -> 5"):
        check_resume_config(cosine, absolute("optim.schedule.name=cosine", "train.epochs=5"), "ckpt")


def test_fit_refuses_to_resume_with_another_lr(trained, tmp_path):
    run_dir, _, _ = trained
    (tmp_path / CKPT_NAME).write_bytes((run_dir / CKPT_NAME).read_bytes())
    with pytest.raises(ConfigError, match=r"trained with another config \(optim.lr: 0.1 -> 0.2\)"):
        fit(compose_cfg(RUN + ["optim.lr=0.2"]), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
