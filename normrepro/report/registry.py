"""The small-scale experiments that ``scripts/reproduce.py`` runs (``experiments.yaml`` next to this module) and the
runs each one plans: its ``experiment=`` config's pre-registered sweep (``hydra.sweeper.params``), stage by stage."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from normrepro.errors import ConfigError, choice_error

DEFAULT_REGISTRY = Path(__file__).resolve().with_name("experiments.yaml")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Stage:
    """One sweep of an experiment: params override the config's sweep (None removes a key); extra overrides
    (``{runs}`` = the experiment's scratch dir)."""
    params: dict
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    """One registered experiment: its config, the claim it tests, paper table, stages, cost, default membership."""
    name: str
    config: str
    claim: str
    table: str | None
    stages: tuple[Stage, ...]
    label: str | None = None       # run dir name format, e.g. "{wd_arm}"; default "key=value,..." of the sweep
    baseline: dict | None = None
    default: bool = True
    minutes: float | None = None   # measured CPU cost of the whole sweep (2 cores, --jobs 2)

    def outputs(self, results: str | os.PathLike = "results") -> list[Path]:
        """The files this experiment's regeneration writes (besides the per-table vs-paper figure)."""
        r = Path(results)
        return [r / f"{self.name}.md", r / f"{self.name}.csv",
                *(r / "figures" / f"{self.name}_{k}.png" for k in ("error", "diff", "curves"))]


@dataclass(frozen=True)
class PlannedRun:
    """One train.py run of an experiment: its stage, run dir name (``<label>/seed<k>``) and overrides."""
    stage: int
    name: str
    overrides: tuple[str, ...]


def _stage(raw) -> Stage:
    raw = raw or {}
    return Stage(params=dict(raw.get("params") or {}), overrides=tuple(str(o) for o in raw.get("overrides") or ()))


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Experiment]:
    """The registered experiments by name, in file order."""
    path = Path(path) if path is not None else DEFAULT_REGISTRY
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"experiment registry {path.name!r} is unreadable: {str(e).splitlines()[0]}") from None
    out = {}
    for name, e in (raw.get("experiments") or {}).items():
        if not isinstance(e, dict) or not e.get("config"):
            raise ConfigError(f"experiment {name!r} in {path.name} needs a 'config' (an experiment= config name)")
        stages = tuple(_stage(s) for s in e.get("stages") or [{}])
        out[name] = Experiment(name=name, config=str(e["config"]), claim=str(e.get("claim", name)),
                               table=e.get("table"), stages=stages, label=e.get("label"), baseline=e.get("baseline"),
                               default=bool(e.get("default", True)), minutes=e.get("minutes"))
    return out


def select(registry: dict[str, Experiment], only: list[str] | None) -> list[Experiment]:
    """The experiments named in ``only`` (in registry order), or every default one; ConfigError on an unknown name."""
    if not only:
        return [e for e in registry.values() if e.default]
    for name in only:
        if name not in registry:
            raise choice_error("experiment", name, registry)
    return [e for e in registry.values() if e.name in only]


def config_sweep(config: str, conf_dir: str | os.PathLike = CONF_DIR) -> tuple[dict, str | None]:
    """(``hydra.sweeper.params``, ``experiment.table``) of ``experiment=<config>`` (Hydra compose API)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if not (Path(conf_dir) / "experiment" / f"{config}.yaml").is_file():
        names = sorted(p.stem for p in (Path(conf_dir) / "experiment").glob("*.yaml"))
        raise choice_error("experiment config", config, names)
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={config}"], return_hydra_config=True)
    except HydraException as e:
        raise ConfigError(f"experiment={config} does not compose: {str(e).splitlines()[0]}") from None
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False) or {}
    return {str(k): str(v) for k, v in params.items()}, OmegaConf.select(cfg, "experiment.table")


def _values(key: str, spec: str) -> list[str]:
    """The values of one sweep parameter, parsed by Hydra's override grammar ("l2,l1", "range(0,5)", ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (ov,) = OverridesParser.create().parse_overrides([f"{key}={spec}"])
    except HydraException as e:
        raise ConfigError(f"bad sweep {key}={spec!r}: {str(e).splitlines()[0]}") from None
    return list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]


def run_name(values: dict, label: str | None) -> str:
    """``<label>/seed<k>``: label from ``label``'s format, else "key=value,..." of the non-seed values."""
    rest = {k.lstrip("+"): v for k, v in values.items() if k != "seed"}
    text = label.format(**rest) if label else ",".join(f"{k}={v}" for k, v in rest.items()) or "default"
    return f"{text.replace('/', '-')}/seed{values.get('seed', 0)}"


def plan(exp: Experiment, conf_dir: str | os.PathLike = CONF_DIR) -> list[PlannedRun]:
    """Every run of ``exp``, stage by stage, in sweep order; ConfigError when the sweep has no seed list."""
    params, _ = config_sweep(exp.config, conf_dir)
    runs: list[PlannedRun] = []
    for i, stage in enumerate(exp.stages):
        merged = {**params, **{k: v for k, v in stage.params.items()}}
        merged = {k: str(v) for k, v in merged.items() if v is not None}
        if "seed" not in merged:
            raise ConfigError(f"experiment {exp.name}: its sweep (hydra.sweeper.params of experiment={exp.config})"
                              " lists no seeds")
        keys = list(merged)
        for combo in itertools.product(*(_values(k, merged[k]) for k in keys)):
            values = dict(zip(keys, combo))
            try:
                name = run_name(values, exp.label)
            except KeyError as e:
                raise ConfigError(f"experiment {exp.name}: label {exp.label!r} names {e}, not a swept key") from None
            runs.append(PlannedRun(i, name, tuple(f"{k}={v}" for k, v in values.items())))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiment {exp.name}: two runs share a run dir name ({exp.label!r}); fix its label")
    return runs
