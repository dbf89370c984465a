"""normrepro.report: run discovery, grouping, statistics (vs scipy and by hand), paper matching, baselines, ordering,
commit stamps, crashed runs, idempotence, no machine paths, errors, figures."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from normrepro import report
from normrepro.errors import ConfigError
from normrepro.report import plots
from normrepro.report.labels import NORM_COLORS, short_labels
from normrepro.report.provenance import code_stamp
from normrepro.report.stats import DIFFERS, WITHIN_NOISE, compare, summarize
from tests.helpers.report_runs import DEVICE, NORMS, SEEDS, final_acc, make_experiment, make_sweep, write_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sweep(tmp_path):
    return make_sweep(tmp_path)


def by_label(groups):
    return {g.label: g for g in groups}


# ----------------------------------------------------------------------------------------------- statistics
def test_summary_matches_the_t_interval_by_hand():
    vals = [2.0, 3.5, 2.5, 4.0, 3.0]
    s = summarize(vals)
    mean, sd = np.mean(vals), np.std(vals, ddof=1)
    half = 2.7764451051977987 * sd / math.sqrt(5)          # t(0.975, 4), from a table
    assert (s.n, s.mean, s.std) == (5, pytest.approx(mean), pytest.approx(sd))
    assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half))
    assert (s.ci_low, s.ci_high) == pytest.approx(sps.t.interval(0.95, 4, loc=mean, scale=sd / math.sqrt(5)))
    one = summarize([7.0])
    assert (one.n, one.mean, one.std, one.ci_low, one.half_width) == (1, 7.0, None, None, None)
    assert summarize([]).mean is None


def test_paired_when_seeds_match_welch_otherwise():
    arm = {0: 3.1, 1: 2.4, 2: 3.9, 3: 2.8, 4: 3.3}
    base = {0: 2.5, 1: 2.2, 2: 3.0, 3: 2.9, 4: 2.6}
    c = compare(arm, base)
    d = np.array([arm[s] - base[s] for s in range(5)])
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert c.test == "paired" and c.diff == pytest.approx(d.mean()) and c.df == 4
    assert c.p == pytest.approx(2 * sps.t.sf(abs(t_hand), 4)) == pytest.approx(sps.ttest_rel(
        list(arm.values()), list(base.values())).pvalue)
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.verdict == (DIFFERS if c.p < 0.05 else WITHIN_NOISE)
    # other seeds in the baseline: Welch, with the Welch-Satterthwaite df computed by hand
    base2 = {5: 2.5, 6: 2.2, 7: 3.0, 8: 2.9}
    w = compare(arm, base2)
    a, b = np.array(list(arm.values())), np.array(list(base2.values()))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    diff = a.mean() - b.mean()
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert w.test == "welch" and w.df == pytest.approx(df) and w.diff == pytest.approx(diff)
    assert (w.ci_low, w.ci_high) == pytest.approx((diff - half, diff + half))
    assert w.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert w.p == pytest.approx(2 * sps.t.sf(abs(diff / math.sqrt(va + vb)), df))
    # pairing changes the answer: a consistent small shift is significant paired, not unpaired
    shifted = {s: v + 0.1 for s, v in base.items()}
    assert compare(shifted, base).p == 0.0 and compare(shifted, base).verdict == DIFFERS
    noisy = {s + 10: v for s, v in shifted.items()}
    assert compare(noisy, base).test == "welch" and compare(noisy, base).verdict == WITHIN_NOISE


def test_n_1_and_zero_variance_do_not_crash():
    c = compare({0: 3.0}, {0: 2.0, 1: 2.5})
    assert c.test == "none" and c.p is None and c.ci_low is None and c.diff == pytest.approx(0.75)
    assert c.verdict == "no test (n = 1 in the arm)" and not c.significant
    assert compare({0: 1.0, 1: 2.0}, {}).verdict == "no test (n = 0 in the baseline)"
    same = compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p == 1.0 and same.diff == 0.0 and same.verdict == WITHIN_NOISE
    dup = compare([(0, 1.0), (0, 1.2), (1, 2.0)], {0: 1.0, 1: 2.0, 2: 1.5})   # a seed twice: not pairable
    assert dup.test == "welch"


# ----------------------------------------------------------------------------------------------- aggregation
def test_collect_and_aggregate_statistics(sweep):
    runs = report.collect_runs([sweep])
    assert len(runs) == len(NORMS) * len(SEEDS) + 3
    groups = {g.settings["norm"] + ("/fp16" if "precision=fp16" in g.overrides else ""): g
              for g in report.aggregate(runs, metric="test_acc")}
    for norm in NORMS:
        g = groups[norm]
        accs = np.array([final_acc(norm, s) for s in SEEDS])
        assert g.n == 3 and g.seeds == list(SEEDS)
        assert g.summary.mean == pytest.approx(accs.mean()) and g.summary.std == pytest.approx(accs.std(ddof=1))
        ci = sps.t.interval(0.95, 2, loc=accs.mean(), scale=accs.std(ddof=1) / math.sqrt(3))
        assert (g.summary.ci_low, g.summary.ci_high) == pytest.approx(ci)
        assert g.best.mean == pytest.approx(np.mean([a + 0.1 * s for a, s in zip(accs, SEEDS)]))
        assert g.epochs == [4] and g.hardware == [DEVICE]
        assert (g.data.dataset, g.data.image_size, g.data.num_train) == ("digits", 8, 1500)
        assert "seed" not in " ".join(g.overrides) and "progress" not in " ".join(g.overrides)
    err = {g.settings["norm"]: g for g in report.aggregate(runs, metric="test_error")}["l1"]
    assert err.summary.mean == pytest.approx(100 - groups["l1"].summary.mean)
    assert groups["topk"].n == 0 and groups["topk"].summary.mean is None and groups["topk"].statuses == {"failed": 1}
    assert groups["l2/fp16"].statuses == {"diverged": 1} and groups["l2/fp16"].n == 0
    order = [g.settings["norm"] for g in report.aggregate(runs)]
    assert order.index("l2") < order.index("l1") < order.index("linf")


def test_baseline_comparison_and_ordering(tmp_path):
    """L2 baseline, L1 within noise (paper: same within its ±), L∞ clearly worse (paper: worse): both agree."""
    rng = np.random.default_rng(0)
    noise = {(n, s): rng.normal(0, 0.3) for n in ("l2", "l1", "linf") for s in range(5)}
    accs = {"l2": 97.0, "l1": 97.0, "linf": 94.0}
    runs_dir = make_experiment(tmp_path / "runs" / "lp", accs=lambda n, s: accs[n] + noise[(n, s)],
                               norms=("l2", "l1", "linf"), seeds=range(5))
    paper = report.load_paper()
    runs = report.collect_runs([runs_dir], paper)
    groups = by_label(report.aggregate(runs, paper, table="lp_bn_imagenet"))
    l2, l1, linf = groups["L2"], groups["L1"], groups["L∞"]
    assert l2.is_baseline and l1.baseline is l2 and linf.baseline is l2 and l2.comparison is None
    errs = {n: [100 - (accs[n] + noise[(n, s)]) for s in range(5)] for n in accs}
    assert linf.comparison.test == "paired"
    assert linf.comparison.p == pytest.approx(sps.ttest_rel(errs["linf"], errs["l2"]).pvalue)
    assert linf.comparison.diff == pytest.approx(np.mean(errs["linf"]) - np.mean(errs["l2"]))
    assert linf.ordering.ours == "worse" and linf.ordering.paper == "worse" and linf.ordering.agrees == "yes"
    assert l1.comparison.verdict == WITHIN_NOISE and l1.ordering.ours == "same"
    assert linf.paper.delta == pytest.approx(36.0 - 33.5) and linf.paper.base_cell.settings["norm"] == "l2"
    summary = report.render_summary([report.TableSummary("lp", "Lp BN", list(groups.values()), code_stamp(runs))])
    assert "| Lp BN (lp) | digits |" in summary and "L∞: +" in summary and "differs (p < 0.05) ✓" in summary


def test_aggregate_pairs_by_seed_only_when_the_seeds_match(tmp_path):
    d = tmp_path / "sw"
    for s in (0, 1, 2):
        write_run(d / f"a{s}", "l2", s)
        write_run(d / f"b{s}", "l1", s)
        write_run(d / f"c{s}", "linf", s + 3)            # other seeds: Welch
    write_run(d / "b3", "l1", 3, status="failed")        # a failed seed does not break the pairing
    groups = by_label(report.aggregate(report.collect_runs([d]), table="lp_bn_imagenet"))
    l1, linf = groups["L1"], groups["L∞"]
    assert l1.comparison.test == "paired" and linf.comparison.test == "welch"
    e = {n: [100 - final_acc(n, s) for s in (0, 1, 2)] for n in ("l2", "linf")}
    e["linf"] = [100 - final_acc("linf", s + 3) for s in (0, 1, 2)]
    assert linf.comparison.p == pytest.approx(sps.ttest_ind(e["linf"], e["l2"], equal_var=False).pvalue)
    assert "Welch t, n = 3/3" in report.render.p_text(linf)


def test_single_seed_cells_say_no_ci(tmp_path):
    write_run(tmp_path / "s" / "0", "l1", 0)
    write_run(tmp_path / "s" / "1", "l2", 0)
    out = report.write_report([tmp_path / "s"], tmp_path / "out", table="lp_bn_imagenet")
    g = by_label(out.groups)["L1"]
    assert g.n == 1 and g.summary.std is None and g.summary.ci_low is None
    assert g.comparison.verdict == "no test (n = 1 in the arm)" and g.ordering.agrees == "n/a"
    row = next(r for r in csv.DictReader(out.csv.open()) if r["norm"] == "l1")
    assert row["std"] == "" and row["n"] == "1" and row["p"] == "" and row["verdict"].startswith("no test")
    assert "n = 1: no CI" in out.md.read_text()


def test_paper_matching(sweep):
    runs = report.collect_runs([sweep])
    by_norm = {g.settings["norm"]: g for g in report.aggregate(runs, metric="test_error")
               if "precision=fp16" not in g.overrides}
    g = by_norm["l2"]
    assert g.paper.cell.table == "lp_bn_imagenet" and g.paper.value == pytest.approx(33.5)
    assert g.paper.reference_only and "different dataset" in g.note
    l1 = by_norm["l1"]                       # a range: midpoint compared, range kept
    assert (l1.paper.low, l1.paper.high, l1.paper.value) == pytest.approx((33.1, 33.4, 33.25))
    fp16 = next(g for g in report.aggregate(runs, metric="test_error") if "precision=fp16" in g.overrides)
    assert fp16.paper.cell.table == "fp16_resnet18" and fp16.paper.cell.outcome == "diverged"
    assert (fp16.paper.low, fp16.paper.high) == pytest.approx((77.0, 97.0))
    assert fp16.baseline.settings["precision"] == "fp32" and fp16.ordering.agrees == "yes"   # both diverged
    acc = {g.settings["norm"]: g for g in report.aggregate(runs, metric="test_acc")}["l1"]
    assert (acc.paper.low, acc.paper.high) == pytest.approx((66.6, 66.9))
    assert all(x.metric == "test_error" for x in report.aggregate(runs, table="lp_bn_imagenet"))


def test_exact_match_and_other_model(tmp_path):
    d = tmp_path / "sw"
    for s in SEEDS:
        write_run(d / f"a{s}", "l2", s, model="vgg11", dataset="cifar10", epochs=80,
                  extra_overrides=("+experiment=wd_on",))
        write_run(d / f"c{s}", "l2", s, model="vgg11", dataset="cifar10", extra_overrides=("experiment=wd_lr/wd_off",))
        write_run(d / f"b{s}", "l1", s, model="resnet20", dataset="cifar10")
    runs = report.collect_runs([d])
    groups = report.aggregate(runs)
    gs = {g.settings["model"]: g for g in groups if "experiment=wd_lr/wd_off" not in g.overrides}
    vgg = gs["vgg11"]
    assert vgg.paper.cell.table == "wd_lr_vgg11_cifar10" and not vgg.paper.reference_only
    assert vgg.paper.value == pytest.approx(90.50) and vgg.paper.best == pytest.approx(90.61)
    short = next(g for g in groups if "experiment=wd_lr/wd_off" in g.overrides)
    assert short.paper.cell.settings["arm"] == "wd_off" and short.paper.reference_only
    assert "different epochs (4 vs paper 80)" in short.note and short.label == "L2 · vgg11 · WD off"
    assert short.baseline is vgg and short.comparison.test == "paired"
    assert gs["resnet20"].paper is None
    ref = {g.settings["model"]: g for g in report.aggregate(runs, table="lp_bn_imagenet")}["resnet20"]
    assert ref.paper.cell.settings["model"] == "resnet18" and ref.paper.reference_only and "different model" in ref.note


def test_paper_yaml_is_packaged_and_complete():
    assert report.paper.DEFAULT_PAPER == REPO / "normrepro" / "report" / "paper.yaml"
    t = report.load_paper().tables
    assert set(t) >= {"lp_bn_imagenet", "wd_lr_vgg11_cifar10", "fp16_resnet18", "bwn_resnet50", "l1_constant",
                      "lp_bn_cifar"}
    for table in t.values():
        assert table.baseline and any(report.paper.selects(c.settings, table.baseline) for c in table.cells)
        for c in table.cells:
            assert c.metric in ("top1_error_pct", "test_acc_pct") and c.source
            assert "dataset" in c.settings or table.id == "lp_bn_cifar"
    assert all(c.value is None and c.mid is None for c in t["lp_bn_cifar"].cells)
    assert [c.mid for c in t["l1_constant"].cells] == [36.0, 34.0, 35.3]
    bwn = t["bwn_resnet50"].cells[1]
    assert (bwn.value, bwn.best) == (28.25, 27.59)


# ----------------------------------------------------------------------------------------------- output files
def test_markdown_csv_crashed_idempotent_and_no_machine_paths(sweep, tmp_path):
    out = tmp_path / "res" / "table"
    rep = report.write_report([sweep], out)
    assert (len(rep.runs), len(rep.groups)) == (12, 5)
    text = rep.md.read_text()
    first = (rep.md.read_bytes(), rep.csv.read_bytes())
    crashed = text.split("## Incomplete or crashed runs")[1]
    for num, status in ((9, "missing"), (10, "failed"), (11, "diverged")):
        assert f"12-00-00/{num}`" in crashed and status in crashed
    assert "NOT the paper's numbers" in text and "Code: git abc1234 (all 11 runs)" in text
    assert DEVICE in text and "Seeds: 0, 1, 2" in text and "digits (image size 8, train images 1500)" in text
    assert str(tmp_path) not in text and str(tmp_path) not in rep.csv.read_text()
    rows = list(csv.DictReader(rep.csv.open()))
    l2 = next(r for r in rows if r["norm"] == "l2" and r["n"] == "3")
    accs = np.array([final_acc("l2", s) for s in SEEDS])
    assert float(l2["mean"]) == pytest.approx(accs.mean(), abs=1e-4)
    assert float(l2["std"]) == pytest.approx(accs.std(ddof=1), abs=1e-4)
    assert l2["paper_table"] == "lp_bn_imagenet" and float(l2["paper_value"]) == pytest.approx(100 - 33.5)
    report.write_report([sweep], out)
    assert (rep.md.read_bytes(), rep.csv.read_bytes()) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.csv", "table.md"]   # no temp files left


def test_mixed_commits_refused_or_marked_and_dirty_marked(tmp_path):
    d = tmp_path / "runs"
    make_experiment(d / "a", seeds=(0, 1), commit="1111111")
    make_experiment(d / "b", seeds=(2, 3), commit="2222222")
    with pytest.raises(ConfigError, match="2 git commits.*--allow-mixed"):
        report.write_report([d], tmp_path / "t")
    text = report.write_report([d], tmp_path / "t", allow_mixed=True).md.read_text()
    assert "**Code: MIXED COMMITS: git 1111111 (6 runs), 2222222 (6 runs)" in text
    make_experiment(tmp_path / "dirty", commit="3333333-dirty")
    rep = report.write_report([tmp_path / "dirty"], tmp_path / "u")
    assert "**Code: DIRTY TREE: git 3333333-dirty (9 runs)" in rep.md.read_text()
    assert not rep.stamp.clean and "not clean" in report.render_summary([rep.summary("x")])


def test_cli_subprocess(sweep, tmp_path):
    out = tmp_path / "cli" / "x"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "normrepro.report", str(sweep), "--out", str(out), "--table", "lp_bn_imagenet",
           "--metric", "test_acc", "--figures", str(tmp_path / "figs"), "--baseline", "norm=l1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "5 group(s) from 12 run(s), 3 incomplete" in r.stdout and str(tmp_path) not in r.stdout
    md = out.with_suffix(".md").read_text()
    assert "final test accuracy %" in md and "Baseline arm: L1 · fp32" in md
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["x_curves.png", "x_diff.png", "x_error.png"]
    for bad_args, msg in (([str(tmp_path / "nope")], "nope"), ([str(sweep), "--baseline", "norm"], "--baseline"),
                          ([str(sweep), "--table", "zzz"], "zzz")):
        bad = subprocess.run([sys.executable, "-m", "normrepro.report", *bad_args], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=60)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
        assert msg in bad.stderr


def test_errors(tmp_path, sweep, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        report.collect_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run dirs"):
        report.write_report([tmp_path / "empty"], tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown paper table"):
        report.write_report([sweep], tmp_path / "o", table="nope")
    assert report.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: sweep dir")   # names the dir as the user gave it


def test_unreadable_metrics_and_config_variants(tmp_path):
    d = tmp_path / "sw"
    write_run(d / "0", "l1", 0)
    write_run(d / "1", "l1", 1, epochs=8)                         # same overrides, other resolved config
    write_run(d / "2", "l1", 2)
    (d / "2" / "metrics.json").write_text("{not json")
    runs = report.collect_runs([d])
    assert {r.path.rsplit("/", 1)[-1]: r.status for r in runs}["2"] == "unreadable"
    gs = report.aggregate(runs)
    assert len(gs) == 2 and all(g.n == 1 for g in gs) and len({g.label for g in gs}) == 2
    assert all("train.epochs" in g.name and "resolved config differs" in g.note for g in gs)


def test_table_from_the_experiment_config_and_committed_records(tmp_path):
    """Records as results/runs/ keeps them (metrics.json + config.yaml, no .hydra): overrides from metrics.json,
    the paper table from experiment.table."""
    runs_dir = make_experiment(tmp_path / "results" / "runs" / "lp_smoke", seeds=(0, 1))
    rep = report.write_report([runs_dir], tmp_path / "results" / "lp_smoke", roots=[tmp_path])
    assert rep.table == "lp_bn_imagenet" and all(g.metric == "test_error" for g in rep.groups)
    assert "from 6 run dir(s) below: `results/runs/lp_smoke`" in rep.md.read_text()
    assert by_label(rep.groups)["L1"].overrides == ("experiment=smoke", "model=resnet18", "norm=l1")


def test_short_labels_never_show_override_strings():
    keys = report.load_paper().settings_keys
    items = [({"norm": "l2", "arm": "wd_on"}, ("experiment=x",), "a"),
             ({"norm": "l2", "arm": "wd_off"}, ("experiment=y",), "b"),
             ({"norm": "l1", "l1_scale": 0.25}, ("norm=l1", "norm.l1_scale=0.25"), "c"),
             ({"norm": "l2_lp", "precision": "fp16", "loss_scaling": False},
              ("norm=l2_lp", "precision=fp16", "precision.loss_scaling=false", "dataset.std=[0.0039]"), "d")]
    labels = short_labels(items, keys)
    assert labels == ["L2 · WD on", "L2 · WD off", "L1 · C×¼", "L2 (lp) · fp16 · no loss scaling · raw pixels"]
    twins = short_labels([({"norm": "l2"}, ("experiment=x", "optim.lr=0.1"), "a"),
                          ({"norm": "l2"}, ("experiment=x", "optim.lr=0.2"), "b")], keys)
    assert twins == ["L2 · lr 0.1", "L2 · lr 0.2"]
    # norm=l2_lp composes to norm.name l2 (impl lp): the override names the norm, never a raw override string
    lp = short_labels([({"norm": "l2", "precision": "fp16"}, ("norm=l2", "precision=fp16"), "a"),
                       ({"norm": "l2", "precision": "fp16"}, ("norm=l2_lp", "precision=fp16"), "b")], keys)
    assert lp == ["L2", "L2 (lp)"]


def test_figures_use_fixed_norm_colours(tmp_path, sweep):
    rep = report.write_report([sweep], tmp_path / "t", table="lp_bn_imagenet", figures=tmp_path / "f")
    assert set(rep.figures) == {"error", "diff", "curves"}
    for p in rep.figures.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots._styles(rep.groups)[by_label(rep.groups)["L∞ · fp32"].name][0] == NORM_COLORS["linf"]
    vs = plots.plot_vs_paper([("ours: digits", rep.groups)], tmp_path / "f" / "vs.png")
    assert vs.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.plot_curves([], tmp_path / "f" / "none.png") is None
    assert plots.plot_diff([], tmp_path / "f" / "none.png") is None


def test_splice_between_markers():
    text = "# README\n\nintro\n<!-- results:start -->\nold table\n<!-- results:end -->\nafter\n"
    out = report.splice(text, "| new |\n")
    assert out == "# README\n\nintro\n<!-- results:start -->\n| new |\n<!-- results:end -->\nafter\n"
    assert report.splice(out, "| new |\n") == out
    with pytest.raises(ConfigError, match="markers"):
        report.splice("no markers", "x")
