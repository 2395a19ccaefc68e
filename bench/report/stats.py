"""The two statistics a report needs: a mean with its Student-t interval, and a Pareto front.

Seeds are few (typically 3 to 5), so the interval over seed replicates uses Student's t with n-1
degrees of freedom rather than the normal 1.96, which would be far too narrow at n=3 (t = 4.30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanInterval:
    """A mean over ``n`` replicates and the half-width of its confidence interval.

    ``half_width`` is NaN when ``n < 2``: one replicate says nothing about the spread, and showing
    it as ±0 would claim a precision nobody measured. ``mean`` is NaN when ``n == 0``.
    """

    mean: float
    half_width: float
    n: int


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanInterval:
    """Mean ± ``t_{(1+confidence)/2, n-1} * sd / sqrt(n)``, with the sample (n-1) standard deviation."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return MeanInterval(math.nan, math.nan, 0)
    if n == 1:
        return MeanInterval(float(data[0]), math.nan, 1)
    t = stats.t.ppf((1 + confidence) / 2, df=n - 1)
    return MeanInterval(float(data.mean()), float(t * data.std(ddof=1) / math.sqrt(n)), n)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> np.ndarray:
    """Which points are on the front of the best score for at most a given cost (boolean mask).

    A point is on the front when no other point costs at most as much and scores at least as well
    while being strictly better in one of the two. Points that tie exactly are all on it; points
    with a NaN score or cost never are.
    """
    cost = np.asarray(costs, dtype=float)
    score = np.asarray(scores, dtype=float)
    valid = ~(np.isnan(cost) | np.isnan(score))
    on_front = valid.copy()
    for i in np.flatnonzero(valid):
        no_worse = valid & (cost <= cost[i]) & (score >= score[i])
        better = (cost < cost[i]) | (score > score[i])
        on_front[i] = not np.any(no_worse & better)
    return on_front
