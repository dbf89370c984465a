"""Small value helpers shared by the report modules: comparing settings, showing values, paths for display."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def get_path(cfg: Any, dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; None when a part is missing."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b": leaf}``."""
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def has_prefix(key: str, prefixes: Sequence[str]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def override_key_value(override: str) -> tuple[str, str | None]:
    """``'+experiment=wd_on'`` -> ``('experiment', 'wd_on')``; ``'~foo'`` -> ``('foo', None)``."""
    body = str(override).lstrip("+~")
    if "=" not in body:
        return body.strip(), None
    key, value = body.split("=", 1)
    return key.strip(), value.strip()


def norm_name(value: Any) -> str:
    """A setting value as a comparable name: lower case, '-' as '_', booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower().replace("-", "_")


def as_float(value: Any) -> float | None:
    """``value`` as a float, None for booleans, None and non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    f = as_float(value)
    return f if f is not None and math.isfinite(f) else None


def as_int(value: Any) -> int | None:
    """``value`` as an int, else None."""
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def same(run_value: Any, cell_value: Any) -> bool:
    """A run's setting equals a cell's (a list = any of its spellings); names ignore case and '-'/'_'."""
    if isinstance(cell_value, (list, tuple)):
        return any(same(run_value, c) for c in cell_value)
    if run_value is None:
        return False
    a, b = as_float(run_value), as_float(cell_value)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    r, c = norm_name(run_value), norm_name(cell_value)
    return r == c or r.rsplit("/", 1)[-1] == c   # experiment=wd_lr/wd_on matches arm wd_on


def show(value: Any) -> str:
    """A value for tables: '' for None, lists joined by '/', floats in %g."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "/".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def primary(value: Any) -> str:
    """A cell setting for prose: the first of its accepted spellings."""
    return show(value[0] if isinstance(value, (list, tuple)) and value else value)


def first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def natural_key(s: str) -> list:
    """Sort key under which 'run/10' sorts after 'run/9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def distinct(values: Iterable[Any]) -> list[str]:
    """The distinct non-empty shown values, naturally sorted."""
    return sorted({show(v) for v in values if v is not None and show(v) != ""}, key=natural_key)


def md_cell(text: Any) -> str:
    """A Markdown table cell: no pipes or newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def display_path(path: str | os.PathLike, roots: Sequence[str | os.PathLike] = ()) -> str:
    """``path`` relative to the first of ``roots`` (then the repository) that contains it, else its last two
    parts: never an absolute path of this machine."""
    p = Path(os.path.abspath(path))
    for root in (*roots, REPO_ROOT):
        try:
            rel = p.relative_to(os.path.abspath(root))
        except ValueError:
            continue
        return rel.as_posix() or "."
    return Path(*p.parts[-2:]).as_posix() if len(p.parts) > 2 else p.name
