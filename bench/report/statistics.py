"""The report's statistics: the unit of replication (a distinct group of teachers) and the t
intervals over it that the tables, claims and figures show.

Every interval of the report is a two-sided t interval at LEVEL over distinct groups: a claim's
paired differences (paired_ci), a cell's or a series' per-group means (interval), and the number
of groups an observed spread would need (half_width, by claims.seeds_needed).
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from bench.report.render import column

LEVEL = 0.95


def half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Half the width of the t interval of a mean of `n` values with standard deviation `sd` (n >= 2)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def paired_ci(diffs: pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """mean(diffs) and its paired t confidence interval (n >= 2 differences)."""
    n, mean, sd = len(diffs), float(diffs.mean()), float(diffs.std(ddof=1))
    half = half_width(sd, n, level)
    return mean, mean - half, mean + half


def interval(values: pd.Series) -> tuple[float, float]:
    """(mean, half-width of its t interval at LEVEL); the half-width is NaN below two values."""
    values = values.dropna().astype(float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if n < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), half_width(float(values.std(ddof=1)), n)


def groups_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's group of teachers as a set (its order, which names the anchor, aside): the unit
    of replication. A record without its members (written before they were recorded) counts as
    its own seed's group."""
    return pd.Series([",".join(map(str, sorted(int(x) for x in m))) if isinstance(m, (list, tuple)) else f"seed {s}"
                      for m, s in zip(column(runs, "teacher_members"), column(runs, "seed"))],
                     index=runs.index, dtype=object)


def per_group(rows: pd.DataFrame, name: str) -> pd.Series:
    """`name` averaged per distinct group of teachers (the unit of replication)."""
    values = pd.to_numeric(column(rows, name), errors="coerce")
    return values.groupby(groups_of(rows)).mean()
