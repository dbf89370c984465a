"""normrepro-eval (issue 13): a run's checkpoint tested again gives the run's own numbers; top-5, max_batches,
dataset overrides; bad input is one ``error:`` line and exit code 2, with no eval.json written."""
import json

import pytest
import torch

from normrepro.checkpoint import CKPT_NAME
from normrepro.evaluation import EVAL_NAME, entry, evaluate_checkpoint
from normrepro.trainer import fit
from tests.helpers.config import TINY, compose_cfg

RUN = TINY + ["train.epochs=2", "train.num_threads=1", "train.eval_batch_size=100", "norm=l1"]
# train.val_fraction and train.ema_decay come with the trainer side of issue 13 (another branch of the same issue)
HAS_VAL_EMA = {"val_fraction", "ema_decay"} <= set(compose_cfg(TINY).train)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch tiny L1 run dir (last.ckpt, metrics.json)."""
    path = tmp_path_factory.mktemp("run")
    fit(compose_cfg(RUN), path)
    return path


def error_of(argv, capsys) -> str:
    """The one stderr line of ``normrepro-eval argv``, which must exit with code 2."""
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_eval_reproduces_the_runs_final_test_accuracy(run_dir, capsys):
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    last_row = json.loads((run_dir / "metrics.json").read_text())["epochs"][-1]
    entry([f"ckpt={run_dir}"])
    out = json.loads((run_dir / EVAL_NAME).read_text())
    assert out["test_acc"] == final["test_acc"]
    assert out["test_loss"] == pytest.approx(last_row["test_loss"], rel=1e-12)
    assert out["epoch"] == 2 and out["images"] == out["num_test"] == 360
    assert out["test_acc"] <= out["test_top5"] <= 100.0 and out["test_top5"] > out["test_acc"]
    printed = capsys.readouterr().out
    assert f"test_acc {out['test_acc']:.2f}" in printed and f"top5 {out['test_top5']:.2f}" in printed


def test_eval_of_a_checkpoint_file_with_max_batches_and_overrides(run_dir):
    whole = evaluate_checkpoint(run_dir / CKPT_NAME)
    part = evaluate_checkpoint(run_dir / CKPT_NAME, {"train.eval_batch_size": 50}, max_batches=2)
    assert part["images"] == 100 and part["max_batches"] == 2 and part["overrides"] == ["train.eval_batch_size=50"]
    assert whole["images"] == 360
    smaller = evaluate_checkpoint(run_dir, {"dataset.image_size": 12}, max_batches=1)  # other input size: runs
    assert smaller["images"] == 100 and smaller["overrides"] == ["dataset.image_size=12"]


def test_eval_bad_input_is_one_line(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint last.ckpt" in error_of([f"ckpt={empty}"], capsys)
    assert "no such run dir" in error_of([f"ckpt={tmp_path / 'nope'}"], capsys)
    assert "unknown key 'foo'" in error_of([f"ckpt={run_dir}", "foo=1"], capsys)
    assert "'dataset.nope'" in error_of([f"ckpt={run_dir}", "dataset.nope=1"], capsys)
    assert "max_batches must be" in error_of([f"ckpt={run_dir}", "max_batches=0"], capsys)
    assert "ckpt=" in error_of(["max_batches=1"], capsys)
    # a checkpoint whose weights are another model's than its config says (width 8, weights of width 4)
    state = torch.load(run_dir / CKPT_NAME, weights_only=True)
    state["config"]["model"]["width"] = 8
    other = tmp_path / "other"
    other.mkdir()
    torch.save(state, other / CKPT_NAME)
    assert "does not match the model of its config" in error_of([f"ckpt={other}"], capsys)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert "corrupt checkpoint" in error_of([f"ckpt={tmp_path / 'junk.ckpt'}"], capsys)
    assert "holds no EMA" in error_of([f"ckpt={run_dir}", "weights=ema"], capsys)
    assert "unknown weights 'best'" in error_of([f"ckpt={run_dir}", "weights=best"], capsys)
    assert not any(p.name == EVAL_NAME for p in tmp_path.rglob("*"))


def test_eval_help(capsys):
    entry(["--help"])
    assert "usage: normrepro-eval ckpt=<run dir or .ckpt file>" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_VAL_EMA, reason="needs train.val_fraction and train.ema_decay (trainer side of issue 13)")
def test_eval_of_a_run_with_a_validation_split_and_an_ema(tmp_path):
    """The held-out split (its normalization statistics are the reduced training split's) and the EMA weights
    evaluate to the run's own numbers."""
    fit(compose_cfg(RUN + ["train.val_fraction=0.2", "train.ema_decay=0.5"]), tmp_path)
    last = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    raw = evaluate_checkpoint(tmp_path)
    assert raw["test_acc"] == last["test_acc"] and raw["val_acc"] == last["val_acc"] and raw["val_images"] > 0
    ema = evaluate_checkpoint(tmp_path, weights="ema")
    assert ema["test_acc"] == last["ema_test_acc"] and ema["weights"] == "ema"
