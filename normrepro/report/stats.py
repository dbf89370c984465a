"""Statistics of a table cell and of an arm against its baseline (scipy).

Per cell: n, mean, sample std (ddof = 1) and the 95 % confidence interval of the mean, mean ± t(0.975, n − 1) ·
std / √n. Against the baseline: the difference of the means (arm − baseline) with its 95 % CI and the two-sided
p-value of a t-test: paired by seed (``scipy.stats.ttest_rel``) when both arms completed exactly the same seeds (n ≥ 2),
Welch's unequal-variance test (``scipy.stats.ttest_ind(equal_var=False)``) otherwise. A cell "differs
(p < 0.05)" or is "within noise"; with n < 2 on a side there is no test and the cell says so.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
DIFFERS = "differs (p < 0.05)"
WITHIN_NOISE = "within noise"


@dataclass(frozen=True)
class Summary:
    """n, mean, sample std and the t-based 95 % CI of the mean (std/CI None when n < 2; all None when n = 0)."""
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        """Half the CI's width (the ± of mean ± half_width), None without a CI."""
        return None if self.ci_low is None else (self.ci_high - self.ci_low) / 2


def t_quantile(df: float) -> float:
    """The two-sided 95 % quantile t(0.975, df) of Student's t distribution."""
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, df))


def summarize(values: Sequence[float]) -> Summary:
    """:class:`Summary` of ``values`` (non-finite ones are an error: filter them first)."""
    vals = [float(v) for v in values]
    if not vals:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(vals)
    half = t_quantile(len(vals) - 1) * std / math.sqrt(len(vals))
    return Summary(len(vals), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """An arm minus its baseline: difference of means, its 95 % CI, the test used and its p-value.

    ``test``: "paired" (by seed), "welch", or "none" (``reason`` says why: n < 2 on a side).
    """
    test: str
    n_arm: int
    n_base: int
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    df: float | None
    reason: str = ""

    @property
    def significant(self) -> bool:
        """p < 0.05."""
        return self.p is not None and self.p < ALPHA

    @property
    def verdict(self) -> str:
        """"differs (p < 0.05)", "within noise" or "no test (...)"."""
        if self.p is None:
            return f"no test ({self.reason})" if self.reason else "no test"
        return DIFFERS if self.significant else WITHIN_NOISE

    @property
    def test_name(self) -> str:
        """The test for tables: "paired t, n = 5", "Welch t, n = 5/3", "none"."""
        if self.test == "paired":
            return f"paired t, n = {self.n_arm}"
        if self.test == "welch":
            return f"Welch t, n = {self.n_arm}/{self.n_base}"
        return "none"


def _pairable(arm: Mapping, base: Mapping) -> bool:
    return len(arm) >= 2 and None not in arm and set(arm) == set(base)


def compare(arm: Mapping[int | None, float] | Sequence[tuple[int | None, float]],
            base: Mapping[int | None, float] | Sequence[tuple[int | None, float]]) -> Comparison:
    """``arm`` − ``base`` from {seed: value} (or (seed, value) pairs; seed None = unknown): paired t-test when both
    hold the same seeds, else Welch's t-test; no test when a side has fewer than 2 values."""
    arm_pairs = list(arm.items()) if isinstance(arm, Mapping) else list(arm)
    base_pairs = list(base.items()) if isinstance(base, Mapping) else list(base)
    a_map, b_map = dict(arm_pairs), dict(base_pairs)
    a_vals, b_vals = [float(v) for _, v in arm_pairs], [float(v) for _, v in base_pairs]
    na, nb = len(a_vals), len(b_vals)
    diff = statistics.fmean(a_vals) - statistics.fmean(b_vals) if na and nb else None
    unique = len(a_map) == na and len(b_map) == nb
    if unique and _pairable(a_map, b_map):
        seeds = sorted(a_map)
        return _paired([a_map[s] for s in seeds], [b_map[s] for s in seeds])
    if na < 2 or nb < 2:
        side = "arm" if na < 2 else "baseline"
        n = na if na < 2 else nb
        return Comparison("none", na, nb, diff, None, None, None, None, f"n = {n} in the {side}")
    return _welch(a_vals, b_vals)


def _paired(a: list[float], b: list[float]) -> Comparison:
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    n = len(d)
    if statistics.pstdev(d) == 0.0:  # every seed differs by the same amount: the t statistic is 0/0 or ±inf
        return Comparison("paired", n, n, mean, mean, mean, 1.0 if mean == 0 else 0.0, n - 1.0,
                          "zero variance of the differences")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(CONFIDENCE)
    return Comparison("paired", n, n, mean, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


def _welch(a: list[float], b: list[float]) -> Comparison:
    from scipy import stats

    mean = statistics.fmean(a) - statistics.fmean(b)
    if statistics.pstdev(a) == 0.0 and statistics.pstdev(b) == 0.0:
        return Comparison("welch", len(a), len(b), mean, mean, mean, 1.0 if mean == 0 else 0.0, None,
                          "zero variance in both arms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(CONFIDENCE)
    return Comparison("welch", len(a), len(b), mean, float(ci.low), float(ci.high), float(res.pvalue),
                      float(res.df))
