"""Aggregate sweep results into a Markdown + CSV table, next to the paper's numbers.

    python -m normrepro.report multirun/2024-05-01/12-00-00 [more dirs] [--out results/NAME]
                               [--table lp_bn_imagenet] [--metric test_acc|test_error] [--paper results/paper.yaml]

Every run dir below the given dirs (a dir holding ``.hydra/overrides.yaml`` or ``metrics.json``) is read:
``metrics.json`` (schema in docs/ARCHITECTURE.md), the resolved ``config.yaml`` (fallback ``.hydra/config.yaml``)
and the overrides. Runs are grouped by their overrides minus ``seed`` (and minus hydra/logger/device/progress
overrides that do not change the result); runs with equal overrides whose resolved configs differ are split.
Per group: mean ± sample std (ddof=1) and n of the final test accuracy of the *completed* runs, the error
(100 - acc), the best-epoch accuracy, the data/epochs/hardware behind them, and the paper's cell (from
``results/paper.yaml``) whose settings match. Output is sorted and holds no timestamps: re-running on the
same runs gives byte-identical files.

Python API (used by notebooks/reproduce_tables.ipynb): ``collect_runs(dirs)``, ``aggregate(runs)``,
``load_paper()``, ``render_markdown``/``render_csv``, ``write_report``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from normrepro.errors import ConfigError, choice_error
from normrepro.utils.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAPER = REPO_ROOT / "results" / "paper.yaml"
METRICS = ("test_acc", "test_error")
PAPER_DATASETS = ("cifar10", "cifar100", "imagenet")
SETTING_ORDER = ("dataset", "model", "precision", "arm", "weight_norm", "l1_scale", "norm")
NORM_RANK = {"l2": 0, "l1": 1, "topk": 2, "linf": 3, "mean": 4, "none": 5}
CELL_VALUE_FIELDS = ("value", "low", "high", "best", "outcome", "note", "source", "metric", "uncertainty")

# overrides that never split a group (besides the seed): where/how a run ran, not what it trained
IGNORED_OVERRIDE_KEYS = ("seed", "device", "hydra", "logger", "train.progress", "train.num_threads",
                         "train.resume", "train.checkpoint")
# resolved-config keys ignored when checking that a group's runs share one config
IGNORED_CONFIG_PREFIXES = IGNORED_OVERRIDE_KEYS + ("wandb",)
IGNORED_CONFIG_LEAVES = ("root", "dir", "data_dir", "path", "cache_dir", "output_dir", "download", "num_workers",
                         "reference")  # optim.reference: the wd_on run of the same seed


# ----------------------------------------------------------------------------------------------- helpers
def _get_path(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def _ignored(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _override_key_value(override: str) -> tuple[str, str | None]:
    """``'+experiment=wd_on'`` -> ``('experiment', 'wd_on')``; ``'~foo'`` -> ``('foo', None)``."""
    body = str(override).lstrip("+~")
    if "=" not in body:
        return body.strip(), None
    key, value = body.split("=", 1)
    return key.strip(), value.strip()


def _norm_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower().replace("-", "_")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _same(run_value: Any, cell_value: Any) -> bool:
    """A run's setting equals a cell's (a list = any of its spellings); names ignore case and '-'/'_'."""
    if isinstance(cell_value, (list, tuple)):
        return any(_same(run_value, c) for c in cell_value)
    if run_value is None:
        return False
    a, b = _as_float(run_value), _as_float(cell_value)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    r, c = _norm_name(run_value), _norm_name(cell_value)
    return r == c or r.rsplit("/", 1)[-1] == c   # experiment=wd_lr/wd_on matches arm wd_on


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "/".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _primary(value: Any) -> str:
    """A cell setting for prose: the first of its accepted spellings."""
    return _show(value[0] if isinstance(value, (list, tuple)) and value else value)


def _fmt_signed(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def _finite(x: Any) -> float | None:
    f = _as_float(x)
    return f if f is not None and math.isfinite(f) else None


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _cell(text: Any) -> str:
    """A Markdown table cell: no pipes or newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------------------------- paper.yaml
def load_paper(path: str | os.PathLike | None = None) -> dict:
    """``results/paper.yaml`` with every cell filled in: ``{"settings_keys": .., "tables": {id: {.., "cells": [..]}}}``.

    Each returned cell holds ``table``, ``index``, ``settings`` (table settings + the cell's), ``value``/``low``/
    ``high``/``mid``/``best``, ``metric``, ``uncertainty``, ``source``, ``outcome``, ``note``.
    """
    path = Path(path) if path is not None else DEFAULT_PAPER
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"paper file {str(path)!r} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"paper file {str(path)!r} is unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
        raise ConfigError(f"paper file {str(path)!r} has no 'tables' mapping")
    tables = {}
    for tid, table in raw["tables"].items():
        common = dict(table.get("settings") or {})
        cells = []
        for i, cell in enumerate(table.get("cells") or []):
            settings = {**common, **{k: v for k, v in cell.items() if k not in CELL_VALUE_FIELDS}}
            low, high, value = _as_float(cell.get("low")), _as_float(cell.get("high")), _as_float(cell.get("value"))
            mid = (low + high) / 2 if low is not None and high is not None else value
            cells.append({
                "table": tid, "index": i, "settings": settings, "value": value, "low": low, "high": high,
                "mid": mid, "best": _as_float(cell.get("best")),
                "metric": cell.get("metric", table.get("metric", "test_acc_pct")),
                "uncertainty": _as_float(cell.get("uncertainty", table.get("uncertainty"))),
                "source": cell.get("source", table.get("source", "")),
                "outcome": cell.get("outcome"), "note": cell.get("note", table.get("note")),
            })
        tables[tid] = {**{k: v for k, v in table.items() if k != "cells"}, "id": tid,
                       "match": list(table.get("match") or []), "soft": list(table.get("soft") or []),
                       "cells": cells}
    return {"settings_keys": raw.get("settings_keys") or {}, "tables": tables}


# ----------------------------------------------------------------------------------------------- runs
def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def find_run_dirs(dirs: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(display path, path)`` of every run dir below ``dirs`` (sorted; hidden dirs are not searched)."""
    found: dict[str, Path] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ConfigError(f"sweep dir {str(d)!r} does not exist or is not a directory")
        for cur, subdirs, files in os.walk(root):
            cur_p = Path(cur)
            if "metrics.json" in files or (cur_p / ".hydra" / "overrides.yaml").is_file():
                found.setdefault(os.path.normpath(cur), cur_p)
                subdirs[:] = []          # a run dir's children (wandb/, ...) are not runs
                continue
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
    return sorted(found.items(), key=lambda kv: _natural_key(kv[0]))


def _natural_key(s: str) -> list:
    """'run/10' sorts after 'run/9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _read_settings(config: dict, overrides: list[str], keys_spec: dict) -> dict:
    ov = {}
    for o in overrides:
        k, v = _override_key_value(o)
        ov[k] = v
    settings = {}
    for key, spec in keys_spec.items():
        value = None
        for src in spec.get("from", []):
            value = ov.get(src[len("override:"):]) if src.startswith("override:") else _get_path(config, src)
            if value is not None:
                break
        if value is None:
            value = spec.get("default")
        mapping = {_norm_name(k): v for k, v in (spec.get("map") or {}).items()}
        if value is not None and _norm_name(value) in mapping:
            value = mapping[_norm_name(value)]
        settings[key] = value
    return settings


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _data_info(config: dict, metrics: dict) -> dict:
    data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
    ds = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    num_train = _first(*(data.get(k) for k in ("num_train", "train_size", "n_train")),
                       *(ds.get(k) for k in ("num_train", "train_size", "n_train", "subset", "max_train",
                                             "train_samples", "limit_train")))
    return {"dataset": _first(data.get("name"), ds.get("name")),
            "image_size": _first(data.get("image_size"), ds.get("image_size")),
            "num_train": num_train}


def _read_run(display: str, path: Path, keys_spec: dict) -> dict:
    run: dict[str, Any] = {"path": display, "status": None, "problem": None, "metrics": None}
    metrics: dict = {}
    mpath = path / "metrics.json"
    if not mpath.is_file():
        run["status"], run["problem"] = "missing", "no metrics.json"
    else:
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            metrics = {}
            run["status"], run["problem"] = "unreadable", f"metrics.json unreadable ({str(e).splitlines()[0]})"
    config = _read_yaml(path / "config.yaml")
    if not isinstance(config, dict):
        config = _read_yaml(path / ".hydra" / "config.yaml")
    config = config if isinstance(config, dict) else {}
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = metrics.get("overrides") if isinstance(metrics.get("overrides"), list) else []
    overrides = [str(o) for o in overrides]

    final = metrics.get("final") if isinstance(metrics.get("final"), dict) else {}
    env = metrics.get("env") if isinstance(metrics.get("env"), dict) else {}
    epochs = [e for e in (metrics.get("epochs") or []) if isinstance(e, dict)]
    if run["status"] is None:
        run["status"] = str(metrics.get("status", "unknown"))
        if run["status"] != "completed":
            run["problem"] = f"status {run['status']}"
        elif _finite(final.get("test_acc")) is None:
            run["problem"] = "completed but no finite final test_acc"
    seed = _first(metrics.get("seed"), config.get("seed"))
    for o in overrides:
        k, v = _override_key_value(o)
        if k == "seed" and seed is None:
            seed = v
    epochs_done = _first(final.get("epochs_done"), epochs[-1].get("epoch") if epochs else None)
    group_ov = sorted((o.lstrip("+") for o in overrides if not _ignored(_override_key_value(o)[0],
                                                                          IGNORED_OVERRIDE_KEYS)),
                      key=lambda o: (_override_key_value(o)[0], o))
    flat = {k: v for k, v in _flatten(config).items()
            if not _ignored(k, IGNORED_CONFIG_PREFIXES) and k.rsplit(".", 1)[-1] not in IGNORED_CONFIG_LEAVES}
    run.update({
        "dir": str(path), "seed": _as_int(seed), "overrides": overrides, "group_overrides": group_ov,
        "config": config, "config_flat": flat, "metrics": metrics or None, "epochs": epochs, "final": final,
        "env": env, "epochs_done": _as_int(epochs_done), "train_epochs": _as_int(_get_path(config, "train.epochs")),
        "settings": _read_settings(config, overrides, keys_spec), "data": _data_info(config, metrics),
        "hardware": env.get("device"), "git_commit": env.get("git_commit"),
        "test_acc": _finite(final.get("test_acc")), "best_test_acc": _finite(final.get("best_test_acc")),
    })
    if run["settings"].get("dataset") is None:
        run["settings"]["dataset"] = run["data"]["dataset"]
    return run


def _as_int(x: Any) -> int | None:
    try:
        return int(x) if x is not None and not isinstance(x, bool) else None
    except (TypeError, ValueError):
        return None


def _assign_groups(runs: list[dict]) -> None:
    """``group`` (label) and ``group_key`` of each run: overrides minus seed, split where resolved configs differ."""
    by_ov: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        ov = tuple(r["group_overrides"])
        if not r["metrics"]:     # crashed before metrics.json: not aggregated, must not split a group
            r["group"], r["group_key"], r["config_note"] = " ".join(ov) or "(defaults)", (ov, None), None
            continue
        fp = json.dumps(r["config_flat"], sort_keys=True, default=str)
        by_ov.setdefault(ov, {}).setdefault(fp, []).append(r)
    for ov, variants in by_ov.items():
        base = " ".join(ov) if ov else "(defaults)"
        if len(variants) == 1:
            for r in next(iter(variants.values())):
                r["group"], r["group_key"], r["config_note"] = base, (ov, ""), None
            continue
        flats = [vr[0]["config_flat"] for vr in variants.values()]
        keys = sorted({k for f in flats for k in f})
        differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        for fp, vruns in variants.items():
            f = vruns[0]["config_flat"]
            suffix = ", ".join(f"{k}={_show(f.get(k))}" for k in differ[:4]) + (" ..." if len(differ) > 4 else "")
            for r in vruns:
                r["group"] = f"{base} [{suffix}]"
                r["group_key"] = (ov, fp)
                r["config_note"] = "same overrides as another group, resolved config differs in: " + ", ".join(differ)


def collect_runs(dirs: Iterable[str | os.PathLike], paper: dict | None = None) -> list[dict]:
    """Every run dir below ``dirs`` as a dict (sorted by path), crashed and incomplete runs included.

    Keys: path, dir, status, problem (None for a usable completed run), seed, overrides, group_overrides, group,
    config, metrics, epochs (per-epoch rows), final, env, epochs_done, train_epochs, settings, data, hardware,
    git_commit, test_acc, best_test_acc. ConfigError when a dir is missing.
    """
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    if not dirs:
        raise ConfigError("no sweep dir given")
    paper = paper if paper is not None else load_paper()
    runs = [_read_run(display, path, paper["settings_keys"]) for display, path in find_run_dirs(dirs)]
    _assign_groups(runs)
    return runs


# ----------------------------------------------------------------------------------------------- aggregation
def _convert(value: float | None, unit: str, metric: str) -> float | None:
    """A paper number in ``unit`` (top1_error_pct | test_acc_pct) as ``metric`` (test_acc | test_error)."""
    if value is None:
        return None
    is_error = "error" in str(unit)
    return value if is_error == (metric == "test_error") else 100.0 - value


def match_cell(settings: dict, paper: dict, table: str | None = None) -> tuple[dict, list[str]] | None:
    """The paper cell a group's settings match and the settings that differ (reference only), or None.

    Keys in the table's ``match`` must be equal (a cell's null/absent key is not checked); ``dataset`` may differ;
    keys in ``soft`` may differ only for an explicitly chosen ``table``. Fewest differences win, then file order.
    """
    best = None
    tables = [paper["tables"][table]] if table else list(paper["tables"].values())
    for ti, t in enumerate(tables):
        soft = ["dataset"] + (t["soft"] if table else [])
        hard = [k for k in t["match"] if k not in soft]
        for cell in t["cells"]:
            cs = cell["settings"]
            if any(cs.get(k) is not None and not _same(settings.get(k), cs[k]) for k in hard):
                continue
            differ = [k for k in soft if cs.get(k) is not None and not _same(settings.get(k), cs[k])]
            rank = (len(differ), ti, cell["index"])
            if best is None or rank < best[0]:
                best = (rank, cell, differ)
    return None if best is None else (best[1], best[2])


def aggregate(runs: list[dict], paper: dict | None = None, table: str | None = None,
              metric: str | None = None) -> list[dict]:
    """One dict per group of runs that wrote metrics, with statistics over its completed runs.

    Sorted: groups with a paper cell first, in paper.yaml's table and cell order, then the others by settings.

    ``metric``: test_acc | test_error (default: the chosen table's unit, else test_acc). Keys: group, overrides,
    n, seeds, runs, statuses, test_acc_mean/std, test_error_mean/std, best_acc_mean/std, mean/std/best_mean/
    best_std (in ``metric``), settings, dataset, image_size, num_train, epochs, hardware, git_commits, paper
    (the matched cell or None), paper_value/low/high/best (in ``metric``), diff, diff_best, reference_only, note.
    """
    paper = paper if paper is not None else load_paper()
    if table is not None and table not in paper["tables"]:
        raise choice_error("paper table", table, paper["tables"])
    metric = metric or default_metric(paper, table)
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("metrics"):
            groups.setdefault(r["group_key"], []).append(r)
    out = []
    for members in groups.values():
        done = [r for r in members if r["problem"] is None]
        accs = [r["test_acc"] for r in done]
        bests = [r["best_test_acc"] for r in done if r["best_test_acc"] is not None]
        acc_m, acc_s = _mean_std(accs)
        best_m, best_s = _mean_std(bests)
        err_m, err_s = (None if acc_m is None else 100.0 - acc_m), acc_s
        statuses: dict[str, int] = {}
        for r in members:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        ref = done[0] if done else members[0]
        settings = dict(ref["settings"])
        g = {
            "group": ref["group"], "overrides": list(ref["group_overrides"]), "n": len(accs),
            "seeds": sorted({r["seed"] for r in done if r["seed"] is not None}),
            "runs": sorted(r["path"] for r in members), "statuses": dict(sorted(statuses.items())),
            "test_acc_mean": acc_m, "test_acc_std": acc_s, "test_error_mean": err_m, "test_error_std": err_s,
            "best_acc_mean": best_m, "best_acc_std": best_s, "metric": metric,
            "settings": settings, "dataset": ref["data"]["dataset"], "image_size": ref["data"]["image_size"],
            "num_train": ref["data"]["num_train"],
            "epochs": sorted({r["epochs_done"] for r in done if r["epochs_done"] is not None}),
            "hardware": sorted({str(r["hardware"]) for r in members if r["hardware"]}),
            "git_commits": sorted({str(r["git_commit"]) for r in members if r["git_commit"]}),
        }
        if metric == "test_acc":
            g.update(mean=acc_m, std=acc_s, best_mean=best_m, best_std=best_s)
        else:
            g.update(mean=err_m, std=err_s, best_mean=None if best_m is None else 100.0 - best_m, best_std=best_s)
        notes = [ref["config_note"]] if ref.get("config_note") else []
        found = match_cell(settings, paper, table)
        g.update(paper=None, paper_value=None, paper_low=None, paper_high=None, paper_best=None, diff=None,
                 diff_best=None, reference_only=False, paper_differs=[])
        if found:
            cell, differ = found
            paper_epochs = _as_float(cell["settings"].get("epochs"))
            if paper_epochs is not None and g["epochs"] and max(g["epochs"]) < paper_epochs:
                differ = [*differ, "epochs"]
            unit = cell["metric"]
            lo, hi = _convert(cell["low"], unit, metric), _convert(cell["high"], unit, metric)
            if lo is not None and hi is not None and lo > hi:
                lo, hi = hi, lo
            pv, pb = _convert(cell["mid"], unit, metric), _convert(cell["best"], unit, metric)
            g.update(paper=cell, paper_value=pv, paper_low=lo, paper_high=hi, paper_best=pb,
                     reference_only=bool(differ), paper_differs=differ,
                     diff=None if pv is None or g["mean"] is None else g["mean"] - pv,
                     diff_best=None if pb is None or g["best_mean"] is None else g["best_mean"] - pb)
            for k in differ:
                ours = " ".join(map(str, g["epochs"])) if k == "epochs" else _show(settings.get(k))
                notes.append(f"different {k} ({ours} vs paper {_primary(cell['settings'][k])}): reference only")
            if pv is None:
                notes.append(cell["note"] or "paper value unknown")
            elif cell["note"]:
                notes.append(cell["note"])
            if cell["outcome"]:
                notes.append(f"paper outcome: {cell['outcome']}")
        bad = {s: c for s, c in statuses.items() if s != "completed"}
        if bad:
            notes.append("not in the statistics: " + ", ".join(f"{c} {s}" for s, c in bad.items()))
        g["note"] = "; ".join(notes)
        out.append(g)
    table_order = {tid: i for i, tid in enumerate(paper["tables"])}
    out.sort(key=lambda g: ((0, table_order[g["paper"]["table"]], g["paper"]["index"]) if g["paper"] else (1, 0, 0),
                            _group_sort_key(g)))
    _short_labels(out)
    return out


def _group_sort_key(g: dict) -> tuple:
    """Settings in a fixed order (norms in the paper's order l2, l1, topk, linf), then the label."""
    s = g["settings"]
    parts = []
    for k in SETTING_ORDER:
        v = s.get(k)
        if k == "norm":
            parts.append((NORM_RANK.get(_norm_name(v), 99) if v is not None else 99, _show(v)))
        else:
            f = _as_float(v)
            parts.append((0, f, "") if f is not None else (1, 0.0, _show(v)))
    return (*parts, _natural_key(g["group"]))


def _short_labels(groups: list[dict]) -> None:
    """``label``: the group's overrides minus those every group shares (for legends)."""
    common = set.intersection(*(set(g["overrides"]) for g in groups)) if groups else set()
    for g in groups:
        rest = [o for o in g["overrides"] if o not in common]
        label = " ".join(rest) if rest else (" ".join(g["overrides"]) or "(defaults)")
        base = " ".join(g["overrides"]) or "(defaults)"
        if g["group"].startswith(base + " ["):  # split by a resolved-config difference: keep that suffix
            label += g["group"][len(base):]
        g["label"] = label


def default_metric(paper: dict, table: str | None) -> str:
    if table and "error" in str(paper["tables"][table].get("metric", "")):
        return "test_error"
    return "test_acc"


def incomplete_runs(runs: list[dict]) -> list[dict]:
    """Runs whose metrics.json is missing/unreadable, whose status is not completed, or without a final accuracy."""
    return [r for r in runs if r["problem"] is not None]


# ----------------------------------------------------------------------------------------------- rendering
CSV_FIELDS = ("group", "label", "overrides", "n", "seeds", "statuses", "test_acc_mean", "test_acc_std",
              "test_error_mean", "test_error_std", "best_acc_mean", "best_acc_std", "dataset", "image_size",
              "num_train", "model", "norm", "precision", "arm", "weight_norm", "l1_scale", "epochs", "hardware",
              "git_commits", "metric", "mean", "std", "paper_table", "paper_cell", "paper_metric", "paper_value",
              "paper_low", "paper_high", "paper_best", "paper_uncertainty", "paper_source", "reference_only",
              "diff", "diff_best", "note", "runs")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _cell_desc(cell: dict, table_settings_keys: Iterable[str] = ()) -> str:
    skip = {"regime", "epochs", *table_settings_keys}
    return ", ".join(f"{k}={_show(v)}" for k, v in cell["settings"].items() if k not in skip and v is not None)


def _paper_cell_name(g: dict, paper: dict) -> str:
    cell = g["paper"]
    if cell is None:
        return ""
    t = paper["tables"][cell["table"]]
    common = [k for k in (t.get("settings") or {})]
    own = _cell_desc(cell, common)
    return f"{cell['table']}: {own}" if own else cell["table"]


def render_csv(groups: list[dict], paper: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for g in groups:
        s, cell = g["settings"], g["paper"]
        row = {
            **{k: _num(g[k]) for k in ("test_acc_mean", "test_acc_std", "test_error_mean", "test_error_std",
                                        "best_acc_mean", "best_acc_std", "mean", "std", "paper_value",
                                        "paper_low", "paper_high", "paper_best", "diff", "diff_best")},
            "group": g["group"], "label": g["label"], "overrides": " ".join(g["overrides"]), "n": g["n"],
            "seeds": " ".join(map(str, g["seeds"])),
            "statuses": " ".join(f"{k}:{v}" for k, v in g["statuses"].items()),
            "dataset": _show(g["dataset"]), "image_size": _show(g["image_size"]), "num_train": _show(g["num_train"]),
            **{k: _show(s.get(k)) for k in ("model", "norm", "precision", "arm", "weight_norm", "l1_scale")},
            "epochs": " ".join(map(str, g["epochs"])), "hardware": "; ".join(g["hardware"]),
            "git_commits": " ".join(g["git_commits"]), "metric": g["metric"],
            "paper_table": cell["table"] if cell else "", "paper_cell": _paper_cell_name(g, paper),
            "paper_metric": cell["metric"] if cell else "",
            "paper_uncertainty": _show(cell["uncertainty"]) if cell else "",
            "paper_source": cell["source"] if cell else "",
            "reference_only": ("yes" if g["reference_only"] else "no") if cell else "",
            "note": g["note"], "runs": " ".join(g["runs"]),
        }
        w.writerow([row[k] for k in CSV_FIELDS])
    return buf.getvalue()


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _paper_text(g: dict) -> str:
    cell = g["paper"]
    if cell is None or g["paper_value"] is None:
        return ""
    unc = f" ±{cell['uncertainty']:g}" if cell["uncertainty"] is not None else ""
    if g["paper_low"] is not None:
        text = f"{g['paper_low']:.2f}–{g['paper_high']:.2f} (mid {g['paper_value']:.2f}){unc}"
    else:
        text = f"{g['paper_value']:.2f}{unc}"
    if g["paper_best"] is not None:
        text += f" (best {g['paper_best']:.2f})"
    return text + (" (ref.)" if g["reference_only"] else "")


def _diff_text(g: dict) -> str:
    """ours − paper; not for reference-only rows (other dataset/model: the difference means nothing)."""
    if g["reference_only"] or g["diff"] is None:
        return ""
    best = f" (best {_fmt_signed(g['diff_best'])})" if g["diff_best"] is not None else ""
    return _fmt_signed(g["diff"]) + best


def _distinct(values: Iterable[Any]) -> list[str]:
    return sorted({_show(v) for v in values if v is not None and _show(v) != ""}, key=_natural_key)


def render_markdown(groups: list[dict], runs: list[dict], paper: dict, sources: Sequence[str],
                    table: str | None = None, title: str | None = None) -> str:
    metric = groups[0]["metric"] if groups else "test_acc"
    what = "final test accuracy %" if metric == "test_acc" else "final top-1 test error % (100 − accuracy)"
    best_what = "best-epoch test accuracy %" if metric == "test_acc" else "best-epoch test error %"
    used = [r for r in runs if r["problem"] is None]
    lines = [f"# {title or 'Results'}", ""]
    lines += [f"Made by `python -m normrepro.report` from {len(runs)} run dir(s) below: "
              + ", ".join(f"`{s}`" for s in sources) + ".",
              f"Numbers: {what}, mean ± sample std (ddof = 1) over the completed runs of a group (n = their count;"
              f" no std when n = 1). Groups = overrides minus `seed`.", ""]
    datasets = _distinct(g["dataset"] for g in groups)
    lines += ["## What these numbers are", ""]
    data_desc = []
    for g in groups:
        d = (f"{_show(g['dataset']) or 'unknown dataset'} (image size {_show(g['image_size']) or 'not recorded'}, "
             f"train images {_show(g['num_train']) or 'not recorded'})")
        if d not in data_desc:
            data_desc.append(d)
    lines.append("- Data: " + ("; ".join(sorted(data_desc)) if data_desc else "none"))
    lines.append("- Models: " + (", ".join(_distinct(g["settings"].get("model") for g in groups)) or "not recorded"))
    lines.append("- Norms: " + (", ".join(_distinct(g["settings"].get("norm") for g in groups)) or "not recorded"))
    lines.append("- Precision: " + (", ".join(_distinct(g["settings"].get("precision") for g in groups))
                                   or "not recorded"))
    lines.append("- Epochs: " + (", ".join(_distinct(e for g in groups for e in g["epochs"])) or "none completed"))
    lines.append("- Hardware: " + ("; ".join(_distinct(h for g in groups for h in g["hardware"])) or "not recorded"))
    lines.append("- Seeds: " + (", ".join(_distinct(r["seed"] for r in used)) or "none")
                 + f" ({len(used)} completed run(s) in {len(groups)} group(s))")
    lines.append("- Code: git " + (", ".join(_distinct(c for g in groups for c in g["git_commits"])) or "not recorded"))
    off = [d for d in datasets if not any(_same(d, p) for p in PAPER_DATASETS)]
    if off or not datasets:
        lines += ["", f"**These runs use {', '.join(off) or 'an unknown dataset'}, not the paper's datasets "
                  "(CIFAR-10/100, ImageNet). Their numbers are NOT the paper's numbers: the paper column is shown "
                  "only as a reference, marked \"different dataset\" (ref.).**"]
    if any(g["reference_only"] for g in groups):
        lines += ["", "Rows marked (ref.) differ from the paper's setting (see the note): compare trends, not values; "
                  "their diff is left blank here (the CSV keeps it, with reference_only = yes)."]
    if table:
        t = paper["tables"][table]
        lines += ["", f"Paper table: `{table}`: {t.get('title', '')}. Setting: "
                  + ", ".join(f"{k}={_show(v)}" for k, v in (t.get('settings') or {}).items()) + "."]
    lines += ["", "## Results", ""]
    header = ["group", "n", "seeds", what, best_what, "status", "epochs", "data", "hardware", "paper cell",
              "paper", "diff (ours − paper)", "note"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for g in groups:
        data = "/".join(x for x in (_show(g["dataset"]), _show(g["image_size"]) and f"{_show(g['image_size'])}px",
                                   _show(g["num_train"]) and f"{_show(g['num_train'])} train") if x)
        row = [f"`{g['group']}`", str(g["n"]), " ".join(map(str, g["seeds"])), _pm(g["mean"], g["std"]),
               _pm(g["best_mean"], g["best_std"]),
               ", ".join(f"{c} {s}" for s, c in g["statuses"].items()), " ".join(map(str, g["epochs"])), data,
               "; ".join(g["hardware"]), _paper_cell_name(g, paper), _paper_text(g),
               _diff_text(g), g["note"]]
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    if not groups:
        lines.append("| (no run wrote metrics) |" + " |" * (len(header) - 1))
    cells = {}
    for g in groups:
        if g["paper"] is not None:
            c = g["paper"]
            cells[(c["table"], c["index"])] = c
    if cells:
        lines += ["", "## Paper cells used", ""]
        order = {tid: i for i, tid in enumerate(paper["tables"])}
        for (tid, _), c in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1])):
            val = (f"{c['low']:g}–{c['high']:g}" if c["low"] is not None else
                   ("unknown" if c["value"] is None else f"{c['value']:g}"))
            best = f", best {c['best']:g}" if c["best"] is not None else ""
            unc = f" ±{c['uncertainty']:g}" if c["uncertainty"] is not None else ""
            regime = c["settings"].get("regime")
            lines.append(f"- `{tid}` {_cell_desc(c)}: {val}{unc} {c['metric']}{best}. Source: {c['source']}."
                         + (f" Regime: {regime}." if regime else ""))
    lines += ["", "## Incomplete or crashed runs", ""]
    bad = incomplete_runs(runs)
    if bad:
        lines += ["| run dir | status | epochs done | reason |", "|---|---|---|---|"]
        for r in bad:
            lines.append("| " + " | ".join(_cell(x) for x in (f"`{r['path']}`", r["status"],
                                                                 _show(r.get("epochs_done")), r["problem"])) + " |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- entry point
def default_out(dirs: Sequence[str]) -> Path:
    name = Path(os.path.normpath(str(dirs[0]))).name or "report"
    return Path("results") / name


def write_report(dirs: Sequence[str], out: str | os.PathLike | None = None, table: str | None = None,
                 metric: str | None = None, paper_path: str | os.PathLike | None = None) -> tuple[Path, Path, dict]:
    """Collect, aggregate and write ``<out>.md`` and ``<out>.csv`` atomically; returns both paths and a summary."""
    dirs = [str(d) for d in dirs]
    if not dirs:
        raise ConfigError("no sweep dir given")
    paper = load_paper(paper_path)
    if table is not None and table not in paper["tables"]:
        raise choice_error("paper table", table, paper["tables"])
    runs = collect_runs(dirs, paper)
    if not runs:
        raise ConfigError(f"no run dirs (with .hydra/overrides.yaml or metrics.json) below {', '.join(dirs)}")
    groups = aggregate(runs, paper, table=table, metric=metric)
    out = Path(out) if out is not None else default_out(dirs)
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    md, csv_path = out.with_name(out.name + ".md"), out.with_name(out.name + ".csv")
    atomic_write_text(md, render_markdown(groups, runs, paper, dirs, table, title=f"Results: {out.name}"))
    atomic_write_text(csv_path, render_csv(groups, paper))
    return md, csv_path, {"runs": len(runs), "groups": len(groups), "incomplete": len(incomplete_runs(runs))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m normrepro.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="sweep dirs (e.g. multirun/<date>/<time>) or run dirs")
    p.add_argument("--out", help="output path without suffix (writes <out>.md, <out>.csv); "
                                 "default results/<basename of the first dir>")
    p.add_argument("--table", help="paper table to compare with (an id in results/paper.yaml); "
                                   "allows a different model as reference")
    p.add_argument("--metric", choices=METRICS, help="default: the table's unit, else test_acc")
    p.add_argument("--paper", help=f"paper numbers file (default {DEFAULT_PAPER.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        md, csv_path, summary = write_report(args.dirs, args.out, args.table, args.metric, args.paper)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {csv_path}: {summary['groups']} group(s) from {summary['runs']} run(s), "
          f"{summary['incomplete']} incomplete or crashed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
