"""Grouping and statistics: one :class:`Group` per set of runs that differ only in the seed, with its summary,
its paper cell, its baseline group, the comparison with that baseline and whether the paper's ordering holds."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from normrepro.errors import choice_error
from normrepro.report.labels import short_labels
from normrepro.report.paper import Paper, PaperCell, baseline_cell, convert, load_paper, match_cell, selects
from normrepro.report.runs import DataInfo, Run
from normrepro.report.stats import Comparison, Summary, compare, summarize
from normrepro.report.values import as_float, natural_key, norm_name, primary, same, show

METRICS = ("test_acc", "test_error")
SETTING_ORDER = ("dataset", "model", "precision", "loss_scaling", "arm", "weight_norm", "l1_scale", "norm")
NORM_RANK = {"l2": 0, "l1": 1, "topk": 2, "topk_ghost": 3, "linf": 4, "mean": 5, "none": 6}


@dataclass(frozen=True)
class PaperMatch:
    """A group's paper cell (values in the group's metric) and the paper's own difference from its baseline cell."""
    cell: PaperCell
    differs: tuple[str, ...]          # settings that differ from the cell's: the value is a reference only
    value: float | None
    low: float | None
    high: float | None
    best: float | None
    base_cell: PaperCell | None
    delta: float | None               # paper: this cell − its baseline cell
    delta_spread: float | None        # ± reading uncertainty of that difference (both cells, in quadrature)

    @property
    def reference_only(self) -> bool:
        """The setting differs (dataset, model, epochs, ...): compare orderings, not values."""
        return bool(self.differs)


@dataclass(frozen=True)
class Ordering:
    """The direction of an arm against its baseline, ours (from the test) and the paper's, and whether they agree."""
    ours: str | None       # better | worse | same | diverged | None (no test)
    paper: str | None
    agrees: str            # yes | no | not resolved | n/a

    def text(self) -> str:
        """"yes", "no (ours worse, paper same)", "not resolved (ours within noise, paper worse)", "n/a"."""
        if self.agrees in ("yes", "n/a"):
            return self.agrees
        ours = "within noise" if self.ours == "same" else self.ours
        return f"{self.agrees} (ours {ours}, paper {self.paper})"


@dataclass(eq=False)
class Group:
    """Runs differing only in the seed: statistics in ``metric`` over the completed ones, paper cell, baseline
    (compared by identity: a baseline group refers to itself)."""
    name: str
    key: tuple
    overrides: tuple[str, ...]
    runs: list[Run] = field(repr=False)
    metric: str
    settings: dict
    values: list[tuple[int | None, float]]      # (seed, final value in metric) of the completed runs
    summary: Summary
    acc: Summary
    best: Summary                                # best-epoch value, in metric
    statuses: dict[str, int]
    data: DataInfo
    epochs: list[int]
    hardware: list[str]
    git_commits: list[str]
    label: str = ""
    paper: PaperMatch | None = None
    baseline: Group | None = field(default=None, repr=False)
    comparison: Comparison | None = None
    ordering: Ordering | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of completed runs in the statistics."""
        return self.summary.n

    @property
    def seeds(self) -> list[int]:
        """Seeds of the completed runs."""
        return sorted({s for s, _ in self.values if s is not None})

    @property
    def is_baseline(self) -> bool:
        """This group is the table's baseline arm."""
        return self.baseline is self

    @property
    def note(self) -> str:
        """The notes as one line."""
        return "; ".join(self.notes)


def default_metric(paper: Paper, table: str | None) -> str:
    """test_error for a table in error units, else test_acc."""
    return "test_error" if table and "error" in paper.tables[table].metric else "test_acc"


def _best_value(r: Run, metric: str) -> float | None:
    if r.best_test_acc is None:
        return None
    return r.best_test_acc if metric == "test_acc" else 100.0 - r.best_test_acc


def _paper_match(settings: dict, epochs: list[int], paper: Paper, table: str | None, metric: str):
    found = match_cell(settings, paper, table)
    if not found:
        return None
    cell, differ = found
    paper_epochs = as_float(cell.settings.get("epochs"))
    if paper_epochs is not None and epochs and max(epochs) < paper_epochs:
        differ = [*differ, "epochs"]
    lo, hi = convert(cell.low, cell.metric, metric), convert(cell.high, cell.metric, metric)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    base = baseline_cell(cell, paper)
    value, base_value = convert(cell.mid, cell.metric, metric), None
    if base is not None:
        base_value = convert(base.mid, base.metric, metric)
    delta = None if value is None or base_value is None else value - base_value
    spread = None if delta is None else math.hypot(cell.spread, base.spread)
    return PaperMatch(cell, tuple(differ), value, lo, hi, convert(cell.best, cell.metric, metric), base, delta,
                      spread)


def _make_group(members: list[Run], paper: Paper, table: str | None, metric: str) -> Group:
    done = [r for r in members if r.usable]
    ref = done[0] if done else members[0]
    statuses: dict[str, int] = {}
    for r in members:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    epochs = sorted({r.epochs_done for r in done if r.epochs_done is not None})
    g = Group(name=ref.group, key=ref.group_key, overrides=tuple(ref.group_overrides), runs=members, metric=metric,
              settings=dict(ref.settings), values=[(r.seed, r.value(metric)) for r in done],
              summary=summarize([r.value(metric) for r in done]), acc=summarize([r.test_acc for r in done]),
              best=summarize([b for r in done if (b := _best_value(r, metric)) is not None]),
              statuses=dict(sorted(statuses.items())), data=ref.data, epochs=epochs,
              hardware=sorted({str(r.hardware) for r in members if r.hardware}),
              git_commits=sorted({str(r.git_commit) for r in members if r.git_commit}))
    if ref.config_note:
        g.notes.append(ref.config_note)
    g.paper = _paper_match(g.settings, epochs, paper, table, metric)
    if g.paper:
        cell = g.paper.cell
        for k in g.paper.differs:
            ours = " ".join(map(str, epochs)) if k == "epochs" else show(g.settings.get(k))
            g.notes.append(f"different {k} ({ours} vs paper {primary(cell.settings[k])}): reference only")
        if g.paper.value is None:
            g.notes.append(cell.note or "paper value unknown")
        elif cell.note:
            g.notes.append(cell.note)
        if cell.outcome:
            g.notes.append(f"paper outcome: {cell.outcome}")
    bad = {s: c for s, c in statuses.items() if s != "completed"}
    if bad:
        g.notes.append("not in the statistics: " + ", ".join(f"{c} {s}" for s, c in bad.items()))
    return g


def _sort_key(g: Group, table_order: dict) -> tuple:
    head = (0, table_order[g.paper.cell.table], g.paper.cell.index) if g.paper else (1, 0, 0)
    parts = []
    for k in SETTING_ORDER:
        v = g.settings.get(k)
        if k == "norm":
            parts.append((NORM_RANK.get(norm_name(v), 99) if v is not None else 99, show(v)))
        else:
            f = as_float(v)
            parts.append((0, f, "") if f is not None else (1, 0.0, show(v)))
    return (head, *parts, natural_key(g.name))


def _direction(diff: float, metric: str) -> str:
    return "better" if (diff > 0) == (metric == "test_acc") else "worse"


def _ordering(g: Group) -> Ordering:
    ours = None
    if g.n == 0 and g.statuses.get("diverged"):
        ours = "diverged"
    elif g.comparison is not None and g.comparison.p is not None:
        ours = _direction(g.comparison.diff, g.metric) if g.comparison.significant else "same"
    theirs = None
    if g.paper and g.paper.cell.outcome == "diverged":
        theirs = "diverged"
    elif g.paper and g.paper.delta is not None:
        theirs = "same" if abs(g.paper.delta) <= g.paper.delta_spread else _direction(g.paper.delta, g.metric)
    if ours is None or theirs is None:
        return Ordering(ours, theirs, "n/a")
    canon = {"diverged": "worse"}
    if canon.get(ours, ours) == canon.get(theirs, theirs):
        return Ordering(ours, theirs, "yes")
    return Ordering(ours, theirs, "not resolved" if ours == "same" else "no")


def assign_baselines(groups: list[Group], paper: Paper, table: str | None, selector: dict | None) -> None:
    """Each group's baseline (the group of the same dataset matching the baseline settings that shares the most
    overrides), the comparison with it and the ordering verdict; the baseline itself gets none."""
    rank = {id(g): i for i, g in enumerate(groups)}
    for g in groups:
        sel = selector or (paper.tables[table].baseline if table else
                           (paper.tables[g.paper.cell.table].baseline if g.paper else {}))
        candidates = [b for b in groups if selects(b.settings, sel) and same(b.data.dataset, g.data.dataset)
                      and same(b.settings.get("model"), g.settings.get("model"))]
        if not candidates:
            continue
        g.baseline = max(candidates, key=lambda b: (len(set(b.overrides) & set(g.overrides)), -rank[id(b)]))
        if g.baseline is not g:
            g.comparison = compare(g.values, g.baseline.values)
            g.ordering = _ordering(g)


def aggregate(runs: list[Run], paper: Paper | None = None, table: str | None = None, metric: str | None = None,
              baseline: dict | None = None) -> list[Group]:
    """One :class:`Group` per set of runs that wrote metrics, sorted (paper cells first, in paper.yaml's order).

    ``table``: the paper table to compare with (other models/datasets allowed, as a reference); ``metric``:
    test_acc | test_error (default: the table's unit, else test_acc); ``baseline``: settings of the baseline arm
    (default: the table's ``baseline``).
    """
    paper = paper if paper is not None else load_paper()
    if table is not None and table not in paper.tables:
        raise choice_error("paper table", table, paper.tables)
    metric = metric or default_metric(paper, table)
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.metrics:
            by_key.setdefault(r.group_key, []).append(r)
    groups = [_make_group(members, paper, table, metric) for members in by_key.values()]
    order = {tid: i for i, tid in enumerate(paper.tables)}
    groups.sort(key=lambda g: _sort_key(g, order))
    labels = short_labels([(g.settings, g.overrides, g.name) for g in groups], paper.settings_keys)
    for g, label in zip(groups, labels):
        g.label = label
    assign_baselines(groups, paper, table, baseline)
    return groups
