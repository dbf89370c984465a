"""Issue 13, console and debug group: the bar's loss/lr postfix, the start summary, the sweep summary callback,
debug=smoke, debug=overfit (digits, tiny), debug=profile (a Chrome trace)."""
import io
import json
import logging
import statistics
import subprocess
import sys

from tqdm import tqdm

from normrepro.console import POSTFIX_EVERY, set_train_postfix
from normrepro.sweep_summary import format_summary, group_of, summarize_sweep
from normrepro.trainer import fit
from tests.helpers.config import REPO, TINY, compose_cfg
from tests.helpers.runs import NORMS, SEEDS, final_acc, make_sweep


class SyncCountingSums:
    """EpochSums stand-in whose loss counts its host reads (each one a device sync on a GPU)."""

    def __init__(self):
        self.reads, self.images = 0, 10
        outer = self

        class Loss:
            def __float__(self):
                outer.reads += 1
                return 23.0

        self.loss = Loss()


def test_train_bar_postfix_every_n_steps_only():
    bar, sums = tqdm(total=100, file=io.StringIO(), disable=False), SyncCountingSums()
    for step in range(2 * POSTFIX_EVERY + 1):
        set_train_postfix(bar, step, sums, 0.05)
    assert sums.reads == 2  # steps 20 and 40, no host read at the others
    assert "loss=2.3000" in bar.postfix and "lr=0.05" in bar.postfix
    off, quiet = tqdm(total=10, disable=True), SyncCountingSums()
    set_train_postfix(off, POSTFIX_EVERY, quiet, 0.1)
    assert quiet.reads == 0  # a disabled bar costs nothing


def test_start_logs_parameter_count_and_settings(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="normrepro.console"):
        fit(compose_cfg(TINY + ["norm=l1", "train.max_eval_batches=1"]), tmp_path)
    text = caplog.text
    model = compose_cfg(TINY)
    from normrepro.trainer import build_model_for

    params = sum(p.numel() for p in build_model_for(model, 10, 1).parameters())
    assert f"{params:,} parameters" in text
    assert "settings: norm=l1 model=resnet20 dataset=digits precision=fp32 lr=0.1 wd=0.0001 epochs=1 batch=64" in text


def test_sweep_summary_groups_by_overrides_minus_seed(tmp_path):
    summary = summarize_sweep(make_sweep(tmp_path))
    for norm in NORMS:
        g = summary[group_of([f"norm={norm}", "model=resnet18", "train.progress=false"])]
        accs = [final_acc(norm, s) for s in SEEDS]
        assert g["completed"] == g["runs"] == 3
        assert g["test_acc"]["mean"] == statistics.fmean(accs) and g["test_acc"]["std"] == statistics.stdev(accs)
    topk = summary[group_of(["norm=topk", "model=resnet18", "train.progress=false"])]
    assert (topk["runs"], topk["completed"]) == (1, 0) and "test_acc" not in topk  # failed; the crash has no metrics
    assert group_of(["seed=3", "norm=l1"]) == group_of(["norm=l1", "seed=0"]) == "norm=l1"
    assert "± " in format_summary(summary)


def test_multirun_prints_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "train.py", "-m", "seed=0,1", *TINY, "train.max_eval_batches=1",
                           f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accs = [json.loads((sweep / str(i) / "metrics.json").read_text())["final"]["test_acc"] for i in (0, 1)]
    summary = json.loads((sweep / "summary.json").read_text())
    (group,) = summary.values()
    assert group["completed"] == 2 and abs(group["test_acc"]["mean"] - statistics.fmean(accs)) < 1e-9
    assert "sweep summary" in proc.stdout and f"{statistics.fmean(accs):.2f} ± " in proc.stdout


def test_debug_smoke_caps_everything_and_writes_no_checkpoint(tmp_path):
    cfg = compose_cfg(["dataset=digits", "dataset.image_size=8", "model.width=4", "train.eval_batch_size=16",
                       "train.progress=false", "debug=smoke"])
    assert (cfg.train.epochs, cfg.train.max_steps_per_epoch, cfg.train.max_eval_batches) == (1, 2, 2)
    result = fit(cfg, tmp_path)
    assert result["epochs"][0]["train_images"] == 2 * cfg.train.batch_size
    assert result["status"] == "completed" and not (tmp_path / "last.ckpt").exists()
    assert (result["epochs"][0]["test_acc"] * 32 / 100) % 1 < 1e-6  # accuracy over 2 batches of 16 images


def test_debug_overfit_fits_a_few_batches(tmp_path):
    cfg = compose_cfg(TINY + ["debug=overfit", "train.epochs=15", "train.max_eval_batches=1",
                              "train.eval_batch_size=64"])
    result = fit(cfg, tmp_path)
    accs = [r["train_acc"] for r in result["epochs"]]
    assert result["data"]["num_train"] == 2 * 64 and all(r["train_images"] == 128 for r in result["epochs"])
    assert accs[-1] >= 95.0 and accs[0] < 50.0, accs


def test_debug_profile_writes_a_chrome_trace(tmp_path):
    result = fit(compose_cfg(TINY + ["debug=profile", "train.max_steps_per_epoch=3"]), tmp_path)
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert result["status"] == "completed" and any("conv" in n for n in names)
