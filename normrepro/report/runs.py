"""Run discovery and loading: every run dir (``metrics.json`` + resolved ``config.yaml``) below the given dirs.

A run dir holds ``metrics.json`` (schema in docs/ARCHITECTURE.md) or ``.hydra/overrides.yaml``; its resolved config
is ``config.yaml`` (fallback ``.hydra/config.yaml``), its overrides ``.hydra/overrides.yaml`` (fallback the
``overrides`` list in metrics.json, which is all that the committed records under ``results/runs/`` keep).
Runs are grouped by their overrides minus ``seed`` (and minus overrides that only say where/how a run ran); runs
with equal overrides whose resolved configs differ are split into separate groups.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normrepro.errors import ConfigError
from normrepro.report.paper import Paper, load_paper
from normrepro.report.values import (
    as_int,
    display_path,
    finite,
    first,
    flatten,
    get_path,
    has_prefix,
    natural_key,
    norm_name,
    override_key_value,
    show,
)

# overrides that never split a group (besides the seed): where/how a run ran, not what it trained
IGNORED_OVERRIDE_KEYS = ("seed", "device", "hydra", "logger", "train.progress", "train.num_threads",
                         "train.resume", "train.checkpoint")
# resolved-config keys ignored when checking that a group's runs share one config
IGNORED_CONFIG_PREFIXES = IGNORED_OVERRIDE_KEYS + ("wandb",)
IGNORED_CONFIG_LEAVES = ("root", "dir", "data_dir", "path", "cache_dir", "output_dir", "download", "num_workers",
                         "reference")  # optim.reference: the wd_on run of the same seed


@dataclass(frozen=True)
class DataInfo:
    """What a run trained on: dataset name, image size, number of training images (None = not recorded)."""
    dataset: str | None
    image_size: int | None
    num_train: int | None


@dataclass
class Run:
    """One run dir as read: status, seed, overrides, resolved config, per-epoch rows, final numbers, settings."""
    path: str                      # for display: relative to the repo / the given dir, never absolute
    dir: Path
    status: str
    problem: str | None            # None = a usable completed run
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    group_overrides: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)
    config_flat: dict = field(default_factory=dict)
    metrics: dict | None = None
    epochs: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    epochs_done: int | None = None
    train_epochs: int | None = None
    settings: dict = field(default_factory=dict)
    data: DataInfo = DataInfo(None, None, None)
    hardware: str | None = None
    git_commit: str | None = None
    test_acc: float | None = None
    best_test_acc: float | None = None
    group: str = ""
    group_key: tuple = ()
    config_note: str | None = None

    @property
    def usable(self) -> bool:
        """Completed with a finite final test accuracy: counted in the statistics."""
        return self.problem is None

    def value(self, metric: str) -> float | None:
        """The final ``test_acc`` or ``test_error`` (100 - acc) of this run."""
        if self.test_acc is None:
            return None
        return self.test_acc if metric == "test_acc" else 100.0 - self.test_acc


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def find_run_dirs(dirs: Iterable[str | os.PathLike], roots: Sequence[str | os.PathLike] = ()) -> list[tuple[str, Path]]:
    """``(display path, path)`` of every run dir below ``dirs`` (sorted; hidden dirs are not searched)."""
    found: dict[str, tuple[str, Path]] = {}
    for d in dirs:
        src = Path(d)
        if not src.is_dir():
            raise ConfigError(f"sweep dir {show(d)!r} does not exist or is not a directory")
        src_display = display_path(src, roots)
        for cur, subdirs, files in os.walk(src):
            cur_p = Path(cur)
            if "metrics.json" in files or (cur_p / ".hydra" / "overrides.yaml").is_file():
                rel = cur_p.relative_to(src).as_posix()
                display = src_display if rel == "." else f"{src_display}/{rel}"
                found.setdefault(os.path.abspath(cur), (display, cur_p))
                subdirs[:] = []          # a run dir's children (wandb/, ...) are not runs
                continue
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
    return sorted(found.values(), key=lambda kv: natural_key(kv[0]))


def read_settings(config: dict, overrides: list[str], keys_spec: dict) -> dict:
    """The paper's settings (``settings_keys`` of paper.yaml: dataset, model, norm, ...) of one run."""
    ov = dict(override_key_value(o) for o in overrides)
    settings = {}
    for key, spec in keys_spec.items():
        value = None
        for src in spec.get("from", []):
            value = ov.get(src[len("override:"):]) if src.startswith("override:") else get_path(config, src)
            if isinstance(value, dict):      # a config group read as a whole: its name
                value = value.get("name")
            if value is not None:
                break
        if value is None:
            value = spec.get("default")
        mapping = {norm_name(k): v for k, v in (spec.get("map") or {}).items()}
        if value is not None and norm_name(value) in mapping:
            value = mapping[norm_name(value)]
        settings[key] = value
    return settings


def _data_info(config: dict, metrics: dict) -> DataInfo:
    data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
    ds = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    num_train = first(*(data.get(k) for k in ("num_train", "train_size", "n_train")),
                      *(ds.get(k) for k in ("num_train", "train_size", "n_train", "subset", "max_train")))
    return DataInfo(first(data.get("name"), ds.get("name")), as_int(first(data.get("image_size"),
                                                                            ds.get("image_size"))), as_int(num_train))


def _load_metrics(path: Path) -> tuple[dict, str | None, str | None]:
    """(metrics, status, problem) of one run dir; status None = read from the file."""
    mpath = path / "metrics.json"
    if not mpath.is_file():
        return {}, "missing", "no metrics.json"
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return {}, "unreadable", f"metrics.json unreadable ({str(e).splitlines()[0]})"
    return metrics, None, None


def read_run(display: str, path: Path, keys_spec: dict) -> Run:
    """One run dir as a :class:`Run` (crashed and incomplete runs included, with the reason in ``problem``)."""
    metrics, status, problem = _load_metrics(path)
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
    if status is None:
        status = str(metrics.get("status", "unknown"))
        if status != "completed":
            problem = f"status {status}"
        elif finite(final.get("test_acc")) is None:
            problem = "completed but no finite final test_acc"
    seed = first(metrics.get("seed"), config.get("seed"),
                 *(v for k, v in map(override_key_value, overrides) if k == "seed"))
    group_ov = sorted((o.lstrip("+") for o in overrides
                       if not has_prefix(override_key_value(o)[0], IGNORED_OVERRIDE_KEYS)),
                      key=lambda o: (override_key_value(o)[0], o))
    flat = {k: v for k, v in flatten(config).items()
            if not has_prefix(k, IGNORED_CONFIG_PREFIXES) and k.rsplit(".", 1)[-1] not in IGNORED_CONFIG_LEAVES}
    data = _data_info(config, metrics)
    settings = read_settings(config, overrides, keys_spec)
    if settings.get("dataset") is None:
        settings["dataset"] = data.dataset
    return Run(path=display, dir=path, status=status, problem=problem, seed=as_int(seed), overrides=overrides,
               group_overrides=tuple(group_ov), config=config, config_flat=flat, metrics=metrics or None,
               epochs=epochs, final=final, env=env,
               epochs_done=as_int(first(final.get("epochs_done"), epochs[-1].get("epoch") if epochs else None)),
               train_epochs=as_int(get_path(config, "train.epochs")), settings=settings, data=data,
               hardware=env.get("device"), git_commit=env.get("git_commit"),
               test_acc=finite(final.get("test_acc")), best_test_acc=finite(final.get("best_test_acc")))


def assign_groups(runs: list[Run]) -> None:
    """Set ``group`` (label) and ``group_key`` of each run: overrides minus seed, split where resolved configs
    differ (``config_note`` says in what)."""
    by_ov: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        ov = r.group_overrides
        if not r.metrics:     # crashed before metrics.json: not aggregated, must not split a group
            r.group, r.group_key, r.config_note = " ".join(ov) or "(defaults)", (ov, None), None
            continue
        fp = json.dumps(r.config_flat, sort_keys=True, default=str)
        by_ov.setdefault(ov, {}).setdefault(fp, []).append(r)
    for ov, variants in by_ov.items():
        base = " ".join(ov) if ov else "(defaults)"
        if len(variants) == 1:
            for r in next(iter(variants.values())):
                r.group, r.group_key, r.config_note = base, (ov, ""), None
            continue
        flats = [vr[0].config_flat for vr in variants.values()]
        keys = sorted({k for f in flats for k in f})
        differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        for fp, vruns in variants.items():
            f = vruns[0].config_flat
            suffix = ", ".join(f"{k}={show(f.get(k))}" for k in differ[:4]) + (" ..." if len(differ) > 4 else "")
            for r in vruns:
                r.group, r.group_key = f"{base} [{suffix}]", (ov, fp)
                r.config_note = "same overrides as another group, resolved config differs in: " + ", ".join(differ)


def collect_runs(dirs: Iterable[str | os.PathLike] | str | os.PathLike, paper: Paper | None = None,
                 roots: Sequence[str | os.PathLike] = ()) -> list[Run]:
    """Every run dir below ``dirs`` as a :class:`Run` (sorted by display path), grouped; ConfigError when a dir is
    missing. ``roots``: dirs that display paths are made relative to (besides the repository)."""
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    if not dirs:
        raise ConfigError("no sweep dir given")
    paper = paper if paper is not None else load_paper()
    runs = [read_run(display, path, paper.settings_keys) for display, path in find_run_dirs(dirs, roots)]
    assign_groups(runs)
    return runs


def incomplete_runs(runs: list[Run]) -> list[Run]:
    """Runs whose metrics.json is missing/unreadable, whose status is not completed, or without a final accuracy."""
    return [r for r in runs if r.problem is not None]
