"""Critical-difference diagrams (Demšar 2006, JMLR 7:1-30, figures 1 and 2), one panel per (model, shots).

Each method sits on an axis of average rank, rank 1 (best) on the left. The critical difference is
drawn as a bar above the axis, and a thick bar below the axis joins each maximal set of methods
whose average ranks differ by less than it, which Nemenyi's test cannot tell apart. A panel whose
group has no Friedman test (too few methods or datasets) shows the ranks without bars, and its
title says why. As with the other figures, :class:`matplotlib.figure.Figure` is used without pyplot.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.report.figures import shots_title
from bench.report.ranks import ALPHA, RankComparison, indistinct_groups

ROW_HEIGHT = 0.3  # inches per label row
BAR_STEP = 0.15  # data units between clique bars
LABEL_STEP = 0.35  # data units between label rows


def critical_difference_figure(comparisons: Sequence[RankComparison], setting: str) -> Figure:
    """The diagram of every group, stacked, titled with what produced the runs (``setting``: the
    protocol, seed replicates and tuning, :func:`bench.report.figures.setting_phrase`)."""
    heights = [1.5 + ROW_HEIGHT * math.ceil(len(c.average_ranks) / 2) for c in comparisons] or [1.5]
    figure = Figure(figsize=(8, sum(heights) + 0.5), layout="constrained")
    figure.suptitle(f"average rank over datasets (Nemenyi critical difference, α = {ALPHA:g})\n{setting}")
    axes = figure.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights}).ravel()
    if not comparisons:
        axes[0].text(0.5, 0.5, "no scored runs", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, comparison in zip(axes, comparisons):
        _panel(ax, comparison)
    return figure


def _panel(ax: Axes, comparison: RankComparison) -> None:
    ax.set_axis_off()
    ax.set_title(_title(comparison), fontsize=9)
    ranks = comparison.average_ranks
    k = len(ranks)
    if k == 0:
        ax.text(0.5, 0.5, "no dataset that every method has", ha="center", va="center", transform=ax.transAxes)
        return
    high = max(k, 1 + np.nan_to_num(comparison.critical_difference))  # a CD longer than the axis shows whole
    ax.plot([1, k], [0, 0], color="black", linewidth=1)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.08], color="black", linewidth=1)
        ax.text(tick, 0.12, str(tick), ha="center", va="bottom", fontsize=8)
    cd = comparison.critical_difference
    bars = [] if math.isnan(cd) else indistinct_groups(ranks.to_numpy(), cd)
    if not math.isnan(cd):
        _cd_bar(ax, cd)
    for depth, (first, last) in enumerate(bars):
        y = -BAR_STEP * (depth + 1)
        ax.plot([ranks.iloc[first] - 0.03, ranks.iloc[last] + 0.03], [y, y], color="black", linewidth=3)
    _labels(ax, ranks, top=-BAR_STEP * (len(bars) + 1), high=high)
    ax.set_xlim(0.8, high + 0.2)


def _cd_bar(ax: Axes, cd: float) -> None:
    y = 0.55
    ax.plot([1, 1 + cd], [y, y], color="C3", linewidth=1.5)
    for x in (1, 1 + cd):
        ax.plot([x, x], [y - 0.05, y + 0.05], color="C3", linewidth=1.5)
    ax.text(1 + cd / 2, y + 0.07, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8, color="C3")


def _labels(ax: Axes, ranks: pd.Series, top: float, high: float) -> None:
    """The better half of the methods labelled on the left, the others on the right, each joined to its rank."""
    left = math.ceil(len(ranks) / 2)
    for i, (method, rank) in enumerate(ranks.items()):
        on_left = i < left
        row = i if on_left else len(ranks) - 1 - i
        y = top - LABEL_STEP * (row + 1)
        end = 0.9 if on_left else high + 0.1
        ax.plot([rank, rank, end], [0, y, y], color="0.4", linewidth=0.8)
        label = f"{method} ({rank:.2f})"
        text, align = (f"{label} ", "right") if on_left else (f" {label}", "left")
        ax.text(end, y, text, ha=align, va="center", fontsize=8)
    ax.set_ylim(top - LABEL_STEP * (left + 1), 0.8)


def _title(comparison: RankComparison) -> str:
    k, n = len(comparison.average_ranks), len(comparison.datasets)
    head = f"{comparison.model}, {shots_title(comparison.shots)}: {k} methods on {n} dataset{'' if n == 1 else 's'}"
    if comparison.note:
        return f"{head}; {comparison.note}"
    return f"{head}, Friedman p = {comparison.friedman_p:.3g}"
