"""Report figures: test score against trainable parameters and against peak memory, and a heat map.

Figures are made with :class:`matplotlib.figure.Figure`, not pyplot: rendering goes through the
non-interactive Agg (PNG) and SVG canvases, no GUI backend is ever selected (reports run on headless
cluster nodes), and no global figure list keeps them alive, so there is nothing to close and
nothing leaks when a sweep writes many reports. Runs of several models or shot counts are never
mixed in one cost plot: each (model, shots) gets its own panel, since a Pareto front across models
would compare methods on different bases.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bench.report.leaderboard import Leaderboard, dataset_column, suite_columns
from bench.report.stats import pareto_front
from bench.runs.record import FULL_DATA

PANEL_COLUMNS = 3
FORMATS = (".png", ".svg")
SVG_SALT = "vl-peft-bench"  # fixed ids in SVG files: an unchanged figure rewrites to identical bytes


def write_figures(board: Leaderboard, figures_dir: Path) -> list[Path]:
    """Write ``ap_vs_params``, ``ap_vs_memory`` and ``ap_per_dataset`` as PNG and SVG; returns the paths."""
    figures = {
        "ap_vs_params": cost_figure(board, "trainable_params", "trainable parameters", log_x=True),
        "ap_vs_memory": cost_figure(board, "peak_memory_gib", f"peak memory (GiB, {_memory_kinds(board)})", log_x=False),
        "ap_per_dataset": heatmap_figure(board),
    }
    return [path for name, figure in figures.items() for path in save(figure, figures_dir / name)]


def save(figure: Figure, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.svg``, without timestamps so that rewriting an unchanged figure changes no bytes."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        for suffix in FORMATS:
            path = stem.with_suffix(suffix)
            metadata = {"Date": None} if suffix == ".svg" else {}
            figure.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
            paths.append(path)
    return paths


def cost_figure(board: Leaderboard, cost_column: str, cost_label: str, *, log_x: bool) -> Figure:
    """The primary suite score (with its 95% CI) against one cost, one panel per (model, shots),
    with the Pareto front (best score for at most that cost) as a step line through its marked members."""
    groups = list(board.table.groupby(["model", "shots"], sort=False))
    columns = min(PANEL_COLUMNS, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    figure.suptitle(f"{board.primary.name} test {board.metric} against {cost_label}; {board.protocol_phrase}")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, ((model, shots), panel) in zip(axes, groups):
        _cost_panel(ax, panel, board, cost_column, log_x)
        ax.set_title(f"{model}, {shots_title(shots)}")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(f"{board.primary.name} test {board.metric} (%)")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return figure


def heatmap_figure(board: Leaderboard) -> Figure:
    """Per-dataset scores, rows in leaderboard order; a cell without a score is hatched, not coloured."""
    table = board.table
    values = 100 * table[[dataset_column(d, board.metric) for d in board.datasets]].to_numpy(dtype=float)
    n_rows, n_columns = values.shape
    figure = Figure(figsize=(2.5 + 0.8 * n_columns, 1.5 + 0.4 * n_rows), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    for i, j in np.argwhere(np.isnan(values)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.75", linewidth=0))
    for i, j in np.argwhere(~np.isnan(values)):
        bright = image.norm(values[i, j]) > 0.6  # the top of viridis is yellow: dark text reads there
        ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8, color="black" if bright else "white")
    ax.set_xticks(range(n_columns), board.datasets, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), _row_labels(table))
    ax.set_title(f"test {board.metric} (%) per dataset, {board.protocol_phrase}; hatched: no result")
    figure.colorbar(image, ax=ax, label=f"test {board.metric} (%)")
    return figure


def _cost_panel(ax: Axes, panel: pd.DataFrame, board: Leaderboard, cost_column: str, log_x: bool) -> None:
    columns = suite_columns(board.primary.name, board.metric)
    scored = panel[panel[columns.mean].notna() & panel[cost_column].notna()]
    if scored.empty:
        ax.text(0.5, 0.5, "no complete seed replicate", ha="center", va="center", transform=ax.transAxes)
        return
    cost = scored[cost_column].to_numpy(dtype=float)
    score = 100 * scored[columns.mean].to_numpy(dtype=float)
    error = 100 * scored[columns.ci95].to_numpy(dtype=float)
    with_interval = ~np.isnan(error)  # one replicate: no bar rather than a bar of zero length
    ax.errorbar(cost[with_interval], score[with_interval], yerr=error[with_interval], fmt="none", ecolor="0.6", capsize=3)
    front = pareto_front(cost, score)
    if not front.all():
        ax.scatter(cost[~front], score[~front], color="C0", zorder=3, label="method")
    ax.scatter(cost[front], score[front], color="C3", marker="D", zorder=3, label="Pareto front")
    order = np.argsort(cost[front])
    step_x = np.append(cost[front][order], cost.max())
    step_y = np.append(score[front][order], score[front][order][-1])
    ax.plot(step_x, step_y, drawstyle="steps-post", color="C3", linewidth=1)
    for label, x, y in zip(scored["method"], cost, score):
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
    if log_x:
        _log_axis(ax, cost)
    ax.legend(loc="lower right", fontsize=8)


def _log_axis(ax: Axes, values: np.ndarray) -> None:
    """Log scale; with a zero among the values (a zero-shot baseline) the decade below the smallest
    positive value becomes linear, so 0 is drawn instead of dropped."""
    positive = values[values > 0]
    if len(positive) == len(values):
        ax.set_xscale("log")
    elif len(positive):
        low, high = math.floor(math.log10(positive.min())), math.ceil(math.log10(positive.max()))
        ax.set_xscale("symlog", linthresh=10.0**low)
        ax.set_xticks([0, *(10.0**k for k in range(low, high + 1))])


def _row_labels(table: pd.DataFrame) -> list[str]:
    """The method, prefixed with model and shots only where the report holds several of them."""
    varying = [column for column in ("model", "shots") if table[column].nunique() > 1]
    def label(row: pd.Series) -> str:
        parts = [row["model"]] if "model" in varying else []
        parts += [shots_title(row["shots"])] if "shots" in varying else []
        return " · ".join([*parts, row["method"]])

    return [label(row) for _, row in table.iterrows()]


def _memory_kinds(board: Leaderboard) -> str:
    return ", ".join(sorted(set(board.table["peak_memory_kind"].dropna())))


def shots_title(shots: str) -> str:
    """``10-shot`` or ``full data``: a panel title."""
    return "full data" if shots == FULL_DATA else f"{shots}-shot"
