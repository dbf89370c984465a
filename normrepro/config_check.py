"""``check_config(cfg)``: the resolved config against the schema (``config_schema.py``) and the cross-key rules;
the first problem is one ConfigError line naming the key, the value and what is accepted:

    train.epochs must be an integer >= 0, got 1.5
    unknown config key 'train.epoch'; train has: batch_size, channels_last, ...
    unknown norm 'l3'; choose one of: l1, l2, linf, mean, none, topk

Imports no torch: train.py runs it before Hydra creates the run dir.
"""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from normrepro.config_schema import CHOICES, FP16_MAX, Config, Section
from normrepro.errors import ConfigError, choice_error


def check_config(cfg) -> dict:
    """Check a resolved config (DictConfig or plain dict) and return it as a plain dict; raise ConfigError."""
    data = _as_dict(cfg)
    _validate(Config, data, "")
    for group, choices in CHOICES.items():
        section = data[group]
        name = section.get("name")
        if name not in choices:
            if name is None:
                raise ConfigError(f"{group}.name is missing; choose one of: {', '.join(sorted(choices))}")
            raise choice_error(group, name, choices)
        _validate(choices[name], section, f"{group}.")
    _cross_checks(data)
    return data


def _as_dict(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            why = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(
                ("full_key:", "object_type=")))
            raise ConfigError(f"cannot resolve {key or 'the config'}: {why}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"the config must be a mapping, got {type(cfg).__name__}")
    return {k: v for k, v in cfg.items() if k != "hydra"}


def _validate(model: type[BaseModel], data: dict, prefix: str) -> None:
    try:
        model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ConfigError(describe_error(model, errors[0], prefix) + more) from None


def describe_error(model: type[BaseModel], err: dict, prefix: str) -> str:
    """One pydantic error as ``<key> must be <accepted>, got <value>`` (or the unknown / missing key)."""
    loc = list(err["loc"])
    names = [p for p in loc if isinstance(p, str)]
    if err["type"] == "extra_forbidden":
        parent_model = _section_at(model, names[:-1])
        key = prefix + ".".join(names)
        parent = (prefix + ".".join(names[:-1])).rstrip(".") or "the top level"
        fields = ", ".join(sorted(parent_model.model_fields)) if parent_model else "no keys"
        return f"unknown config key {key!r}; {parent} has: {fields}"
    key = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if err["type"] == "missing":
        return f"{key} is missing (required)"
    if err["type"] == "value_error":
        accepted = str(err.get("ctx", {}).get("error", err["msg"]))
    else:
        holder = _section_at(model, names[:-1])
        field = holder.model_fields.get(names[-1]) if holder is not None and names else None
        if field is None:
            accepted = err["msg"].lower()
        elif isinstance(loc[-1], int):  # an item of a list
            accepted = _describe(typing.get_args(_strip_optional(field.annotation))[0])
        else:
            accepted = accepted_text(field)
    return f"{key} must be {accepted}, got {_show(err.get('input'))}"


def _section_at(model: type[BaseModel], names: list[str]) -> type[BaseModel] | None:
    """The Section reached from ``model`` along the field ``names`` (None if one is not a section)."""
    for name in names:
        field = model.model_fields.get(name) if model is not None else None
        model = _section_of(field.annotation) if field is not None else None
    return model


def _strip_optional(annotation):
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None))
    return annotation


def _section_of(annotation) -> type[Section] | None:
    for tp in (annotation, *typing.get_args(annotation)):
        if isinstance(tp, type) and issubclass(tp, Section):
            return tp
    return None


def accepted_text(field) -> str:
    """What a field accepts, in words: its description, or one derived from its annotation."""
    if getattr(field, "description", None):
        return field.description
    return _describe(field.annotation)


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        info = next((m for m in args[1:] if getattr(m, "description", None)), None)
        return info.description if info else _describe(args[0])
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return "null or " + (_describe(rest[0]) if len(rest) == 1 else "a value")
    if origin is list:
        return "a list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, "a value")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _cross_checks(cfg: dict) -> None:
    """Rules between keys: milestones increasing (in epochs), pure fp16's range, nesterov, WD/LR reference."""
    epochs, optim, sched = cfg["train"].get("epochs", 10), cfg["optim"], cfg["optim"].get("schedule") or {}
    raw = list(sched.get("milestones") or [])
    in_epochs = [m * epochs if 0 < m < 1 else m for m in raw]
    if any(b <= a for a, b in zip(in_epochs, in_epochs[1:])):
        raise ConfigError(f"optim.schedule.milestones must be increasing (in epochs; values < 1 are fractions of "
                          f"train.epochs={epochs}), got {raw}" + (f" = {in_epochs} epochs" if raw != in_epochs else ""))
    prec = cfg["precision"]
    if prec["name"] == "fp16" and not prec.get("master_weights", False):
        for key in ("lr", "weight_decay"):
            value = optim.get(key, 0.0)
            if value > FP16_MAX:
                raise ConfigError(f"optim.{key} must be <= {FP16_MAX:g} (the largest float16) with precision=fp16 "
                                  f"and fp16 weights, got {value!r}; or set precision.master_weights=true")
    if optim.get("nesterov") and not optim.get("momentum", 0.0) > 0:
        raise ConfigError(f"optim.nesterov=true needs optim.momentum > 0, got {optim.get('momentum')!r}")
    if optim.get("mode", "standard") != "standard" and not optim.get("reference"):
        raise ConfigError(f"optim.mode={optim['mode']} needs optim.reference=<run dir of a wd_on run> "
                          f"(its weight_norms.pt)")
    ds = cfg["dataset"]
    channels = ds.get("in_channels", 3)
    for key in ("mean", "std"):
        if ds.get(key) is not None and len(ds[key]) != channels:
            raise ConfigError(f"dataset.{key} must have one value per channel ({channels}), got {ds[key]}")
