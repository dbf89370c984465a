"""The paper's numbers (``paper.yaml`` next to this module) as dataclasses, and matching a run group to a cell."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normrepro.errors import ConfigError
from normrepro.report.values import as_float, same

DEFAULT_PAPER = Path(__file__).resolve().with_name("paper.yaml")
CELL_VALUE_FIELDS = ("value", "low", "high", "best", "outcome", "note", "source", "metric", "uncertainty")


@dataclass(frozen=True)
class PaperCell:
    """One number of the paper: its settings (table's merged under the cell's), value or low/high range, unit."""
    table: str
    index: int
    settings: dict
    value: float | None
    low: float | None
    high: float | None
    best: float | None
    metric: str
    uncertainty: float | None
    source: str
    outcome: str | None
    note: str | None

    @property
    def mid(self) -> float | None:
        """The value compared with: the midpoint of a range, else the single reading."""
        if self.low is not None and self.high is not None:
            return (self.low + self.high) / 2
        return self.value

    @property
    def spread(self) -> float:
        """± points around ``mid``: the reading uncertainty or half the range, whichever is larger."""
        half = (self.high - self.low) / 2 if self.low is not None and self.high is not None else 0.0
        return max(half, self.uncertainty or 0.0)


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: title, unit, common settings, matching rules, baseline arm and cells."""
    id: str
    title: str
    metric: str
    settings: dict
    match: list
    soft: list
    baseline: dict
    cells: list[PaperCell]
    source: str = ""
    note: str | None = None


@dataclass(frozen=True)
class Paper:
    """``paper.yaml``: how run settings are read (``settings_keys``) and the tables by id, in file order."""
    settings_keys: dict
    tables: dict[str, PaperTable] = field(default_factory=dict)


def _cell(tid: str, index: int, table: dict, raw: dict) -> PaperCell:
    common = dict(table.get("settings") or {})
    settings = {**common, **{k: v for k, v in raw.items() if k not in CELL_VALUE_FIELDS}}
    return PaperCell(table=tid, index=index, settings=settings, value=as_float(raw.get("value")),
                     low=as_float(raw.get("low")), high=as_float(raw.get("high")), best=as_float(raw.get("best")),
                     metric=str(raw.get("metric", table.get("metric", "test_acc_pct"))),
                     uncertainty=as_float(raw.get("uncertainty", table.get("uncertainty"))),
                     source=str(raw.get("source", table.get("source", ""))), outcome=raw.get("outcome"),
                     note=raw.get("note", table.get("note")))


def load_paper(path: str | os.PathLike | None = None) -> Paper:
    """The paper file (default: the packaged ``paper.yaml``) with every cell's inherited fields filled in."""
    path = Path(path) if path is not None else DEFAULT_PAPER
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"paper file {path.name!r} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"paper file {path.name!r} is unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
        raise ConfigError(f"paper file {path.name!r} has no 'tables' mapping")
    tables = {}
    for tid, t in raw["tables"].items():
        cells = [_cell(tid, i, t, c) for i, c in enumerate(t.get("cells") or [])]
        tables[tid] = PaperTable(id=tid, title=str(t.get("title", "")), metric=str(t.get("metric", "test_acc_pct")),
                                 settings=dict(t.get("settings") or {}), match=list(t.get("match") or []),
                                 soft=list(t.get("soft") or []), baseline=dict(t.get("baseline") or {}),
                                 cells=cells, source=str(t.get("source", "")), note=t.get("note"))
    return Paper(settings_keys=raw.get("settings_keys") or {}, tables=tables)


def convert(value: float | None, unit: str, metric: str) -> float | None:
    """A paper number in ``unit`` (top1_error_pct | test_acc_pct) as ``metric`` (test_acc | test_error)."""
    if value is None:
        return None
    is_error = "error" in str(unit)
    return value if is_error == (metric == "test_error") else 100.0 - value


def match_cell(settings: dict, paper: Paper, table: str | None = None) -> tuple[PaperCell, list[str]] | None:
    """The paper cell a group's settings match and the settings that differ (reference only), or None.

    Keys in the table's ``match`` must be equal (a cell's null/absent key is not checked); ``dataset`` may differ;
    keys in ``soft`` may differ only for an explicitly chosen ``table``. Fewest differences win, then file order.
    """
    best = None
    tables = [paper.tables[table]] if table else list(paper.tables.values())
    for ti, t in enumerate(tables):
        soft = ["dataset"] + (t.soft if table else [])
        hard = [k for k in t.match if k not in soft]
        for cell in t.cells:
            cs = cell.settings
            if any(cs.get(k) is not None and not same(settings.get(k), cs[k]) for k in hard):
                continue
            differ = [k for k in soft if cs.get(k) is not None and not same(settings.get(k), cs[k])]
            rank = (len(differ), ti, cell.index)
            if best is None or rank < best[0]:
                best = (rank, cell, differ)
    return None if best is None else (best[1], best[2])


def selects(settings: dict, selector: dict) -> bool:
    """Whether ``settings`` satisfy every key of ``selector`` (a baseline description such as {norm: l2})."""
    return bool(selector) and all(same(settings.get(k), v) for k, v in selector.items())


def baseline_cell(cell: PaperCell, paper: Paper) -> PaperCell | None:
    """The baseline cell of ``cell``'s table that shares the most of its other settings (e.g. the same model)."""
    table = paper.tables[cell.table]
    candidates = [c for c in table.cells if selects(c.settings, table.baseline)]
    if not candidates:
        return None

    def shared(c: PaperCell) -> int:
        return sum(1 for k, v in cell.settings.items() if k not in table.baseline and _equal(c.settings.get(k), v))

    return max(candidates, key=lambda c: (shared(c), -c.index))


def _equal(a: Any, b: Any) -> bool:
    return a == b or (a is not None and b is not None and (same(a, b) or same(b, a)))
