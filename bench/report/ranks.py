"""Average ranks over datasets, Friedman's test and Nemenyi's critical difference, per (model, shots) group.

This follows Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR
7:1-30, section 3.2.2. Datasets are the independent units, so each method gets one score per
dataset: its mean over that dataset's seed replicates. On every dataset the methods are ranked, 1
being the best and ties sharing the average of their ranks, and the ranks are averaged over the N
datasets. Friedman's test asks whether the k average ranks differ more than chance allows.
Nemenyi's post-hoc test then calls two methods different when their average ranks differ by at
least the critical difference CD = q_α √(k(k+1)/(6N)). Demšar's table of q_α is the studentized
range quantile divided by √2. Read CD only where Friedman rejects, since it is a post-hoc test.

Ranking needs a complete design, so only the datasets that every method of the group has are
ranked. The others are listed with the methods lacking them. ``scipy.stats.friedmanchisquare``
corrects χ² for ties within a dataset. Without ties it is Demšar's
12N/(k(k+1)) (Σ R_j² − k(k+1)²/4); with ties it is slightly larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.frame import shots_order

ALPHA = 0.05
MIN_METHODS = 3  # scipy's friedmanchisquare, and with two methods the paired comparison is the test
MIN_DATASETS = 2


@dataclass(frozen=True)
class RankComparison:
    """Average ranks of one (model, shots) group and Friedman's test of them.

    ``average_ranks`` is indexed by method, best (lowest) first. ``datasets`` are the N datasets
    ranked. ``left_out`` maps each dataset left out to the methods without a score on it. Statistics
    that do not apply, or that cannot be significant at this k and N, are NaN, and ``note`` says why.
    """

    model: str
    shots: str
    average_ranks: pd.Series
    datasets: tuple[str, ...]
    left_out: dict[str, tuple[str, ...]]
    friedman_chi2: float
    friedman_p: float
    critical_difference: float
    note: str


def rank_comparisons(frame: pd.DataFrame, alpha: float = ALPHA) -> list[RankComparison]:
    """One :class:`RankComparison` per (model, shots) group of the runs frame, in leaderboard order."""
    scored = frame[frame["score"].notna()]
    groups = sorted(scored.groupby(["model", "shots"]), key=lambda item: (item[0][0], shots_order(item[0][1])))
    return [_rank_group(model, shots, runs, alpha) for (model, shots), runs in groups]


def average_ranks(scores: pd.DataFrame) -> pd.Series:
    """Mean over datasets (rows) of each method's (column's) rank, 1 best and ties averaged, lowest first."""
    ranks = stats.rankdata(-scores.to_numpy(dtype=float), axis=1)
    means = pd.Series(ranks.mean(axis=0), index=scores.columns, name="average_rank")
    return means.sort_values(kind="stable")


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's q_α for k methods: the studentized range quantile with infinite degrees of freedom over √2."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, datasets: int, alpha: float = ALPHA) -> float:
    """Nemenyi's CD = q_α √(k(k+1)/(6N)) for k methods ranked on N datasets."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * datasets))


def indistinct_groups(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of positions in ``ranks`` (sorted ascending) that differ by less than ``cd``.

    These are the bars of a critical-difference diagram. Methods joined by a bar are not
    significantly different, and a run inside a longer one is not repeated.
    """
    ordered = np.asarray(ranks, dtype=float)
    groups: list[tuple[int, int]] = []
    for first, rank in enumerate(ordered):
        last = int(np.flatnonzero(ordered - rank < cd).max())
        if last > first and (not groups or last > groups[-1][1]):
            groups.append((first, last))
    return groups


def _rank_group(model: str, shots: str, runs: pd.DataFrame, alpha: float) -> RankComparison:
    means = runs.groupby(["dataset", "method"])["score"].mean().unstack("method")
    complete = means.dropna()
    incomplete = means.index.difference(complete.index)
    left_out = {dataset: tuple(means.columns[means.loc[dataset].isna()]) for dataset in incomplete}
    ranks = average_ranks(complete) if len(complete) else pd.Series(dtype=float, name="average_rank")
    chi2, p, cd, note = _friedman(complete, alpha)
    return RankComparison(model, shots, ranks, tuple(complete.index), left_out, chi2, p, cd, note)


def _friedman(scores: pd.DataFrame, alpha: float) -> tuple[float, float, float, str]:
    """χ², p, CD and a note. p is NaN where the design cannot reach significance, with the note saying so."""
    datasets, k = scores.shape
    if k < MIN_METHODS:
        note = f"only {k} method{'' if k == 1 else 's'} (Friedman's test needs {MIN_METHODS})"
        return math.nan, math.nan, math.nan, note
    if datasets < MIN_DATASETS:
        plural = "" if datasets == 1 else "s"
        note = f"only {datasets} dataset{plural} that every method has (Friedman's test needs {MIN_DATASETS})"
        return math.nan, math.nan, math.nan, note
    values = scores.to_numpy(dtype=float)
    if (np.ptp(values, axis=1) == 0).all():  # scipy's tie correction would divide by zero
        return math.nan, math.nan, math.nan, "every method ties on every dataset: nothing to test"
    result = stats.friedmanchisquare(*values.T)
    cd = critical_difference(k, datasets, alpha)
    # the largest χ² there is: every dataset ranks the methods the same way
    smallest_p = float(stats.chi2.sf(datasets * (k - 1), k - 1))
    if smallest_p > alpha:
        return float(result.statistic), math.nan, cd, (
            f"too few datasets for a test: with {k} methods on {datasets} datasets even the same ranking on every "
            f"dataset gives p = {smallest_p:.3g}"
        )
    return float(result.statistic), float(result.pvalue), cd, ""
