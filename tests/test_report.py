"""normrepro.report: run discovery, grouping, statistics, paper matching, crashed runs, idempotence, errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from normrepro import report
from normrepro.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NORMS = ("l2", "l1", "linf")
SEEDS = (0, 1, 2)
EPOCHS = 4
DEVICE = "cpu x86_64 (2 threads, 2 cores)"


def final_acc(norm: str, seed: int) -> float:
    """Deterministic fake final accuracy of (norm, seed)."""
    base = {"l2": 90.0, "l1": 89.5, "linf": 85.0, "topk": 87.0}[norm]
    return base + 0.37 * seed - 0.11 * seed * seed


def write_run(run_dir: Path, norm: str, seed: int, *, status: str = "completed", model: str = "resnet18",
              dataset: str = "digits", epochs: int = EPOCHS, metrics: bool = True, extra_overrides=(),
              precision: str = "fp32") -> Path:
    """A schema-correct run dir (docs/ARCHITECTURE.md): .hydra/{overrides,config}.yaml, config.yaml, metrics.json."""
    overrides = [f"norm={norm}", f"model={model}", f"seed={seed}", "train.progress=false", *extra_overrides]
    cfg = {"seed": seed, "device": "cpu", "model": {"name": model}, "norm": {"name": norm, "eps": 1e-5},
           "dataset": {"name": dataset, "image_size": 8, "num_train": 1500}, "precision": {"name": precision},
           "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4}, "train": {"epochs": epochs, "batch_size": 128,
                                                                               "progress": False},
           "logger": {"name": "none"}}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if not metrics:
        return run_dir
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    acc = final_acc(norm, seed)
    done = epochs if status == "completed" else max(1, epochs // 2)
    rows = []
    for e in range(1, done + 1):
        test_acc = acc - 5.0 * (epochs - e) if status != "diverged" else 10.0
        rows.append({"epoch": e, "lr": 0.1, "train_loss": 1.0 / e if status != "diverged" else float("nan"),
                     "train_acc": test_acc + 1, "test_loss": 0.5, "test_acc": test_acc, "seconds": 1.5})
    accs = [r["test_acc"] for r in rows]
    m = {"status": status, "epochs": rows,
         "final": {"test_acc": rows[-1]["test_acc"], "best_test_acc": max(accs) + 0.1 * seed, "epochs_done": done,
                   "wall_seconds": 1.5 * done, "images_per_second": 1000.0},
         "env": {"git_commit": "abc1234", "torch": "2.4.0", "device": DEVICE, "precision": precision},
         "seed": seed, "overrides": overrides}
    # json.dumps writes NaN for a diverged loss, as the trainer's writer does
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return run_dir


def make_sweep(root: Path) -> Path:
    """multirun/<date>/<time>/<num>: 3 norms x 3 seeds completed, 1 crash without metrics, 1 failed, 1 diverged."""
    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    num = 0
    for norm in NORMS:
        for seed in SEEDS:
            write_run(sweep / str(num), norm, seed)
            num += 1
    write_run(sweep / str(num), "topk", 0, metrics=False)                 # crashed before writing metrics
    write_run(sweep / str(num + 1), "topk", 1, status="failed")
    write_run(sweep / str(num + 2), "l2", 0, status="diverged", precision="fp16", extra_overrides=("precision=fp16",))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


@pytest.fixture()
def sweep(tmp_path):
    return make_sweep(tmp_path)


def test_collect_and_aggregate_statistics(sweep):
    runs = report.collect_runs([sweep])
    assert len(runs) == len(NORMS) * len(SEEDS) + 3
    groups = {g["settings"]["norm"] + ("/fp16" if "precision=fp16" in g["overrides"] else ""): g
              for g in report.aggregate(runs, metric="test_acc")}
    for norm in NORMS:
        g = groups[norm]
        accs = np.array([final_acc(norm, s) for s in SEEDS])
        assert g["n"] == 3 and g["seeds"] == list(SEEDS)
        assert g["test_acc_mean"] == pytest.approx(accs.mean())
        assert g["test_acc_std"] == pytest.approx(accs.std(ddof=1))
        assert g["test_error_mean"] == pytest.approx(100 - accs.mean())
        assert g["best_acc_mean"] == pytest.approx(np.mean([a + 0.1 * s for a, s in zip(accs, SEEDS)]))
        assert g["epochs"] == [EPOCHS] and g["hardware"] == [DEVICE]
        assert (g["dataset"], g["image_size"], g["num_train"]) == ("digits", 8, 1500)
        assert "seed" not in " ".join(g["overrides"]) and "progress" not in " ".join(g["overrides"])
    # topk: one crash (no metrics: no group), one failed -> n = 0, no mean
    assert groups["topk"]["n"] == 0 and groups["topk"]["mean"] is None
    assert groups["topk"]["statuses"] == {"failed": 1}
    assert groups["l2/fp16"]["statuses"] == {"diverged": 1} and groups["l2/fp16"]["n"] == 0
    # sorted in the paper's norm order
    order = [g["settings"]["norm"] for g in report.aggregate(runs)]
    assert order.index("l2") < order.index("l1") < order.index("linf")


def test_single_seed_has_blank_std(tmp_path):
    write_run(tmp_path / "s" / "0", "l1", 0)
    (g,) = report.aggregate(report.collect_runs([tmp_path / "s"]))
    assert g["n"] == 1 and g["std"] is None and g["test_acc_mean"] == pytest.approx(final_acc("l1", 0))
    md, csv_path, _ = report.write_report([tmp_path / "s"], tmp_path / "out")
    row = next(csv.DictReader(csv_path.open()))
    assert row["test_acc_std"] == "" and row["n"] == "1"


def test_paper_matching(sweep):
    runs = report.collect_runs([sweep])
    # no table chosen: resnet18 on digits matches the ImageNet ResNet-18 cells, as a reference (different dataset)
    by_norm = {g["settings"]["norm"]: g for g in report.aggregate(runs, metric="test_error")
               if "precision=fp16" not in g["overrides"]}
    g = by_norm["l2"]
    assert g["paper"]["table"] == "lp_bn_imagenet" and g["paper_value"] == pytest.approx(33.5)
    assert g["reference_only"] and "different dataset" in g["note"]
    assert g["diff"] == pytest.approx(g["test_error_mean"] - 33.5)
    l1 = by_norm["l1"]                       # a range: midpoint compared, range kept
    assert (l1["paper_low"], l1["paper_high"], l1["paper_value"]) == pytest.approx((33.1, 33.4, 33.25))
    # the diverged fp16 L2 run matches the paper's fp16 cell (L2 in fp16 diverges)
    fp16 = next(g for g in report.aggregate(runs, metric="test_error") if "precision=fp16" in g["overrides"])
    assert fp16["paper"]["table"] == "fp16_resnet18" and fp16["paper"]["outcome"] == "diverged"
    assert (fp16["paper_low"], fp16["paper_high"]) == pytest.approx((77.0, 97.0)) and fp16["diff"] is None
    # as accuracy: 100 - error, range flipped
    acc = {g["settings"]["norm"]: g for g in report.aggregate(runs, metric="test_acc")}["l1"]
    assert (acc["paper_low"], acc["paper_high"]) == pytest.approx((66.6, 66.9))
    # explicit table: the default metric is the table's unit (error)
    gs = report.aggregate(runs, table="lp_bn_imagenet")
    assert all(x["metric"] == "test_error" for x in gs)


def test_exact_match_and_other_model(tmp_path):
    """VGG-11 on CIFAR-10 for 80 epochs, arm wd_on: exact match with the paper's cell (not reference); 4 epochs:
    reference only; resnet20 only via --table."""
    d = tmp_path / "sw"
    for s in SEEDS:
        write_run(d / f"a{s}", "l2", s, model="vgg11", dataset="cifar10", epochs=80,
                  extra_overrides=("+experiment=wd_on",))
        write_run(d / f"c{s}", "l2", s, model="vgg11", dataset="cifar10", extra_overrides=("experiment=wd_lr/wd_off",))
        write_run(d / f"b{s}", "l1", s, model="resnet20", dataset="cifar10")
    runs = report.collect_runs([d])
    gs = {g["settings"]["model"]: g for g in report.aggregate(runs) if "experiment=wd_lr/wd_off" not in g["overrides"]}
    vgg = gs["vgg11"]
    assert vgg["paper"]["table"] == "wd_lr_vgg11_cifar10" and not vgg["reference_only"]
    assert vgg["paper_value"] == pytest.approx(90.50) and vgg["paper_best"] == pytest.approx(90.61)
    assert vgg["diff_best"] == pytest.approx(vgg["best_acc_mean"] - 90.61)
    short = next(g for g in report.aggregate(runs) if "experiment=wd_lr/wd_off" in g["overrides"])
    assert short["paper"]["settings"]["arm"] == "wd_off" and short["reference_only"]
    assert "different epochs (4 vs paper 80)" in short["note"]
    assert gs["resnet20"]["paper"] is None
    ref = {g["settings"]["model"]: g for g in report.aggregate(runs, table="lp_bn_imagenet")}["resnet20"]
    assert ref["paper"]["settings"]["model"] == "resnet18" and ref["reference_only"]
    assert "different model" in ref["note"]


def test_paper_yaml_is_complete():
    paper = report.load_paper()
    t = paper["tables"]
    assert set(t) >= {"lp_bn_imagenet", "wd_lr_vgg11_cifar10", "fp16_resnet18", "bwn_resnet50", "l1_constant",
                      "lp_bn_cifar"}
    for table in t.values():
        for c in table["cells"]:
            assert c["metric"] in ("top1_error_pct", "test_acc_pct") and c["source"]
            assert "dataset" in c["settings"] or table["id"] == "lp_bn_cifar"
    assert all(c["value"] is None and c["mid"] is None for c in t["lp_bn_cifar"]["cells"])
    assert [c["mid"] for c in t["l1_constant"]["cells"]] == [36.0, 34.0, 35.3]
    bwn = t["bwn_resnet50"]["cells"][1]
    assert (bwn["value"], bwn["best"]) == (28.25, 27.59)


def test_markdown_csv_crashed_and_idempotent(sweep, tmp_path):
    out = tmp_path / "res" / "table"
    md, csv_path, summary = report.write_report([sweep], out)
    assert summary == {"runs": 12, "groups": 5, "incomplete": 3}
    text = md.read_text()
    first = (md.read_bytes(), csv_path.read_bytes())
    assert "## Incomplete or crashed runs" in text
    crashed = text.split("## Incomplete or crashed runs")[1]
    for num, status in ((9, "missing"), (10, "failed"), (11, "diverged")):
        assert f"12-00-00/{num}`" in crashed and status in crashed
    assert "NOT the paper's numbers" in text and "different dataset" in text
    assert DEVICE in text and "Seeds: 0, 1, 2" in text and "digits (image size 8, train images 1500)" in text
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 5
    l2 = next(r for r in rows if r["norm"] == "l2" and r["n"] == "3")
    accs = np.array([final_acc("l2", s) for s in SEEDS])
    assert float(l2["test_acc_mean"]) == pytest.approx(accs.mean(), abs=1e-4)
    assert float(l2["test_acc_std"]) == pytest.approx(accs.std(ddof=1), abs=1e-4)
    assert l2["paper_table"] == "lp_bn_imagenet" and float(l2["paper_value"]) == pytest.approx(100 - 33.5)
    report.write_report([sweep], out)
    assert (md.read_bytes(), csv_path.read_bytes()) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.csv", "table.md"]   # no temp files left


def test_cli_subprocess(sweep, tmp_path):
    out = tmp_path / "cli" / "x"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "normrepro.report", str(sweep), "--out", str(out), "--table", "lp_bn_imagenet",
           "--metric", "test_acc"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "5 group(s) from 12 run(s), 3 incomplete" in r.stdout
    first = out.with_suffix(".md").read_bytes()
    assert b"final test accuracy %" in first and b"lp_bn_imagenet" in first
    bad = subprocess.run([sys.executable, "-m", "normrepro.report", str(tmp_path / "nope")], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "nope" in bad.stderr


def test_errors(tmp_path, sweep, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        report.collect_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run dirs"):
        report.write_report([tmp_path / "empty"], tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown paper table"):
        report.write_report([sweep], tmp_path / "o", table="nope")
    assert report.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: sweep dir")


def test_unreadable_metrics_and_config_variants(tmp_path):
    d = tmp_path / "sw"
    write_run(d / "0", "l1", 0)
    write_run(d / "1", "l1", 1, epochs=8)                         # same overrides, other resolved config
    write_run(d / "2", "l1", 2)
    (d / "2" / "metrics.json").write_text("{not json")
    runs = report.collect_runs([d])
    assert {r["path"].rsplit(os.sep, 1)[-1]: r["status"] for r in runs}["2"] == "unreadable"
    gs = report.aggregate(runs)
    assert len(gs) == 2 and all(g["n"] == 1 for g in gs)
    assert all("train.epochs" in g["group"] and "resolved config differs" in g["note"] for g in gs)


def test_default_out_and_plots(sweep, tmp_path):
    assert report.default_out([str(sweep) + "/"]) == Path("results/12-00-00")
    from normrepro.report_plots import plot_bars, plot_curves

    runs = report.collect_runs([sweep])
    groups = report.aggregate(runs, table="lp_bn_imagenet", metric="test_acc")
    a = plot_curves(runs, tmp_path / "f" / "curves.png")
    b = plot_bars(groups, tmp_path / "f" / "bars.png")
    for p in (a, b):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([], tmp_path / "f" / "none.png") is None
