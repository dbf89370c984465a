"""scripts/reproduce.py and the experiment registry: plans from the pre-registered sweeps, runs end to end on the tiny
smoke experiment into a temporary root (never the repo's results/), records without machine paths, bad input."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normrepro.errors import ConfigError
from normrepro.report import records
from normrepro.report.registry import Experiment, Stage, load_registry, plan, run_name, select

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce.py"


def reproduce_module():
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_registry_and_plans():
    reg = load_registry()
    smoke = reg["smoke_lp_digits"]
    assert not smoke.default and smoke not in select(reg, None) and select(reg, ["smoke_lp_digits"]) == [smoke]
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; choose one of: .*smoke_lp_digits"):
        select(reg, ["nope"])
    runs = plan(smoke)   # the sweep comes from the config's hydra.sweeper.params
    assert [r.name for r in runs] == ["norm=l2/seed0", "norm=l2/seed1", "norm=l1/seed0", "norm=l1/seed1"]
    assert runs[2].overrides == ("norm=l1", "seed=0")
    staged = Experiment("x", "smoke_lp_digits", "c", None, (Stage({"norm": "l2"}), Stage({"norm": "l1,linf",
                                                                                           "seed": "range(0,3)"})),
                        label="{norm}")
    names = [(r.stage, r.name) for r in plan(staged)]
    assert names[:2] == [(0, "l2/seed0"), (0, "l2/seed1")] and (1, "linf/seed2") in names and len(names) == 8
    with pytest.raises(ConfigError, match="names 'arm'"):
        plan(Experiment("x", "smoke_lp_digits", "c", None, (Stage({}),), label="{arm}"))
    with pytest.raises(ConfigError, match="unknown experiment config 'nope'"):
        plan(Experiment("x", "nope", "c", None, (Stage({}),)))
    with pytest.raises(ConfigError, match="lists no seeds"):
        plan(Experiment("x", "smoke_lp_digits", "c", None, (Stage({"seed": None}),)))
    assert run_name({"experiment": "wd_lr/wd_on", "seed": "3"}, None) == "experiment=wd_lr-wd_on/seed3"


def test_publish_records_relativizes_and_replaces(tmp_path):
    src = tmp_path / "scratch" / "a" / "seed0"
    src.mkdir(parents=True)
    (src / "metrics.json").write_text(json.dumps({"status": "completed", "ref": str(tmp_path / "scratch" / "x")}))
    (src / "config.yaml").write_text(f"optim:\n  reference: {tmp_path}/scratch/wd_on/seed0\n")
    (src / "last.ckpt").write_bytes(b"weights")
    dest = tmp_path / "results" / "runs" / "exp"
    (dest / "stale" / "seed9").mkdir(parents=True)
    assert records.publish_records([("a/seed0", src)], dest, roots=[tmp_path]) == 1
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == \
        ["a/seed0/config.yaml", "a/seed0/metrics.json"]
    assert str(tmp_path) not in (dest / "a/seed0/config.yaml").read_text()
    assert "reference: scratch/wd_on/seed0" in (dest / "a/seed0/config.yaml").read_text()
    leaky = tmp_path / "elsewhere"
    leaky.mkdir()
    (leaky / "metrics.json").write_text(json.dumps({"home": os.path.expanduser("~") + "/data"}))
    if os.path.expanduser("~") not in ("/", "~"):
        with pytest.raises(ConfigError, match="path of this machine"):
            records.publish_records([("b/seed0", leaky)], tmp_path / "results" / "runs" / "exp2", roots=[tmp_path])


def test_bad_input_is_one_line():
    for args, message in ((["--only", "nope"], "unknown experiment 'nope'"), (["--jobs", "0"], "--jobs")):
        proc = run_script(*args, "--root", "/nonexistent-root", timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    listing = run_script("--list", timeout=120)
    assert listing.returncode == 0 and "smoke_lp_digits (only with --only" in listing.stdout


def test_dirty_tree_is_refused_without_allow_dirty(tmp_path, monkeypatch, capsys):
    module = reproduce_module()
    monkeypatch.setattr(module, "tree_changes", lambda: ["normrepro/trainer.py"])
    assert module.main(["--only", "smoke_lp_digits", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes (1 file(s): normrepro/trainer.py)" in err and "--allow-dirty" in err
    assert not (tmp_path / "results").exists()


def test_reproduce_smoke_end_to_end(tmp_path):
    (tmp_path / "README.md").write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    before = sorted(p.name for p in (REPO / "results").iterdir())
    proc = run_script("--only", "smoke_lp_digits", "--allow-dirty", "--jobs", "4", "--root", str(tmp_path),
                      "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "results" / "runs" / "smoke_lp_digits"
    files = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file())
    assert files == [f"norm={n}/seed{s}/{f}" for n in ("l1", "l2") for s in (0, 1)
                     for f in ("config.yaml", "metrics.json")]
    for f in runs.rglob("*"):
        if f.is_file():
            assert str(tmp_path) not in f.read_text() and str(REPO) not in f.read_text()
    results = tmp_path / "results"
    table = (results / "smoke_lp_digits.md").read_text()
    assert "`results/runs/smoke_lp_digits`" in table and "| L1 | 2 | 0 1 |" in table and "paired t, n = 2" in table
    assert str(tmp_path) not in table and str(tmp_path) not in proc.stdout
    figs = sorted(p.name for p in (results / "figures").iterdir())
    assert figs == ["lp_bn_imagenet_vs_paper.png", "smoke_lp_digits_curves.png", "smoke_lp_digits_diff.png",
                    "smoke_lp_digits_error.png"]
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "smoke_lp_digits" in readme and readme.startswith("# x\n<!-- results:start -->")
    assert "[smoke_lp_digits](results/smoke_lp_digits.md)" in (results / "summary.md").read_text()
    first = (results / "smoke_lp_digits.md").read_bytes()
    again = run_script("--only", "smoke_lp_digits", "--no-run", "--root", str(tmp_path), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (results / "smoke_lp_digits.md").read_bytes() == first   # regenerated from the records: identical
    assert sorted(p.name for p in (REPO / "results").iterdir()) == before   # the repo's results/ untouched


CLAIMS = ("lp_bn", "l1_constant", "wd_lr", "bwn", "fp16")


def test_registered_evidence_is_preregistered_with_five_seeds_on_both_datasets():
    """Every default experiment plans >= 5 seeds (0-4) per arm; each claim exists on digits and on mnist5k."""
    from collections import defaultdict

    default = [e for e in load_registry().values() if e.default]
    for exp in default:
        seeds = defaultdict(set)
        for r in plan(exp):
            arm, seed = r.name.rsplit("/seed", 1)
            seeds[arm].add(int(seed))
        assert seeds and all(s >= {0, 1, 2, 3, 4} for s in seeds.values()), (exp.name, dict(seeds))
        assert exp.minutes, exp.name
    names = {e.name for e in default}
    for claim in CLAIMS:
        for dataset in ("digits", "mnist5k"):
            assert any(n.startswith(claim) and n.endswith(dataset) for n in names), (claim, dataset)
    wd = {r.name.split("/")[0] for r in plan(load_registry()["wd_lr_mnist5k"])}
    assert wd == {"wd_on", "wd_off", "lr_correction", "norm_schedule"}
    fp16 = {r.name.split("/")[0] for r in plan(load_registry()["fp16_resnet20_mnist5k"])}
    assert len(fp16) == 7 and "norm=l2,precision=fp32" in fp16
