"""Short human labels for groups ("L1", "L2 · WD off", "L1 · C×¼", "L2 (lp) · fp16 · no loss scaling") and the fixed
colour of each norm, shared by tables and figures: never raw override strings."""
from __future__ import annotations

from collections.abc import Sequence

from normrepro.report.values import as_float, norm_name, override_key_value, show

NORM_LABELS = {"l2": "L2", "l1": "L1", "linf": "L∞", "topk": "Top-k", "topk_ghost": "ghost Top-k",
               "mean": "mean-only", "l2_lp": "L2 (lp)", "none": "no norm", "bwn": "mean-only", "wn": "mean-only",
               "bwn_gain": "mean-only"}
# one colour per norm, the same in every figure (matplotlib's tab10 order)
NORM_COLORS = {"l2": "#1f77b4", "l1": "#ff7f0e", "topk": "#2ca02c", "linf": "#d62728", "topk_ghost": "#9467bd",
               "mean": "#8c564b", "l2_lp": "#17becf", "none": "#7f7f7f", "bwn": "#8c564b", "wn": "#8c564b",
               "bwn_gain": "#8c564b"}
FALLBACK_COLOR = "#bcbd22"
ARM_LABELS = {"wd_on": "WD on", "wd_off": "WD off", "lr_correction": "LR correction",
              "norm_schedule": "norm schedule"}
WEIGHT_NORM_LABELS = {"bwn": "BWN", "bounded": "BWN", "bwn_gain": "BWN + gain", "wn": "WN", "plain": "WN"}
FRACTIONS = {0.25: "¼", 0.5: "½", 0.75: "¾"}
# overrides that are not paper settings but name a condition (label, or None = say nothing)
OVERRIDE_LABELS = {"dataset.std": "raw pixels", "dataset.mean": None}
LABEL_SETTINGS = ("dataset", "model", "precision", "loss_scaling", "arm", "weight_norm", "l1_scale")


def group_norm(settings: dict, overrides: Sequence[str] = ()):
    """The group's norm option: ``norm=<x>`` among its overrides when it names a known norm (``l2_lp`` composes to
    norm.name l2 with impl lp), else the settings' norm."""
    for o in overrides:
        key, value = override_key_value(o)
        if key == "norm" and norm_name(value) in NORM_LABELS:
            return value
    return settings.get("norm")


def norm_label(norm) -> str:
    """"L2", "L1", "L∞", "Top-k", ... for a norm name."""
    return NORM_LABELS.get(norm_name(norm), show(norm)) if norm is not None else "?"


def norm_color(norm) -> str:
    """The fixed colour of a norm (hex)."""
    return NORM_COLORS.get(norm_name(norm), FALLBACK_COLOR) if norm is not None else FALLBACK_COLOR


def _setting_label(key: str, value, settings: dict) -> str | None:
    if value is None:
        return None
    if key == "arm":
        return ARM_LABELS.get(norm_name(value).rsplit("/", 1)[-1], show(value))
    if key == "weight_norm":
        return None if norm_name(value) == "none" else WEIGHT_NORM_LABELS.get(norm_name(value), show(value))
    if key == "l1_scale":
        f = as_float(value)
        return f"C×{FRACTIONS.get(f, show(f if f is not None else value))}"
    if key == "loss_scaling":
        if norm_name(settings.get("precision")) in ("fp32", "none", ""):
            return None
        return "loss scaling" if norm_name(value) == "true" else "no loss scaling"
    return show(value)


def covered_override_keys(settings_keys: dict) -> set[str]:
    """Override keys that the paper settings already describe (norm=..., experiment=..., norm.l1_scale=...)."""
    keys = set()
    for spec in settings_keys.values():
        for src in spec.get("from", []):
            src = src[len("override:"):] if src.startswith("override:") else src
            keys.add(src)
            if src.endswith(".name"):
                keys.add(src[:-5])
    return keys | {"experiment"}


def _override_label(override: str) -> str | None:
    key, value = override_key_value(override)
    if key in OVERRIDE_LABELS:
        return OVERRIDE_LABELS[key]
    return f"{key.rsplit('.', 1)[-1]} {value}" if value is not None else key.rsplit(".", 1)[-1]


def short_labels(items: Sequence[tuple[dict, Sequence[str], str]], settings_keys: dict) -> list[str]:
    """A label per (settings, overrides, group name): the norm, then what differs among the items.

    A group split by a resolved-config difference keeps its ``[...]`` suffix so that labels stay distinct.
    """
    differing = [k for k in LABEL_SETTINGS if len({show(s.get(k)) for s, _, _ in items}) > 1]
    covered = covered_override_keys(settings_keys)
    common = set.intersection(*(set(o) for _, o, _ in items)) if items else set()
    labels = []
    for settings, overrides, name in items:
        parts = [norm_label(group_norm(settings, overrides))]
        parts += [x for k in differing if (x := _setting_label(k, settings.get(k), settings))]
        for o in overrides:
            key = override_key_value(o)[0]
            if o not in common and key not in covered and (x := _override_label(o)):
                parts.append(x)
        label = " · ".join(dict.fromkeys(parts))
        if name.endswith("]") and " [" in name:
            label += " [" + name.rsplit(" [", 1)[1]
        labels.append(label)
    ambiguous = {x for x in labels if labels.count(x) > 1}
    for i, label in enumerate(list(labels)):   # still ambiguous: add what differs in the overrides themselves
        if label in ambiguous:
            rest = [o for o in items[i][1] if o not in common]
            labels[i] = label + " · " + (", ".join(_override_label(o) or o for o in rest) or items[i][2])
    return labels
