"""Report figures: test score against trainable parameters, peak memory and training cost, and a heat map.

Figures are made with :class:`matplotlib.figure.Figure`, not pyplot: rendering goes through the
non-interactive Agg (PNG) and SVG canvases, no GUI backend is ever selected (reports run on headless
cluster nodes), and no global figure list keeps them alive, so there is nothing to close and
nothing leaks when a sweep writes many reports. Runs of several models or shot counts are never
mixed in one cost plot: each (model, shots) gets its own panel, since a Pareto front across models
would compare methods on different bases. Every title says what produced the numbers: the protocol,
how hyper-parameters were obtained and how many seed replicates each point averages.

Point labels are placed by adjustText so that none hides another label, a marker or an error bar;
it runs a fixed number of iterations rather than its default time limit, so that an unchanged
report redraws to identical bytes whatever the machine's load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import pandas as pd
from adjustText import adjust_text, get_bboxes_pathcollection
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from bench.report.leaderboard import Leaderboard, dataset_column, suite_columns
from bench.report.stats import pareto_front
from bench.runs.record import FULL_DATA

PANEL_COLUMNS = 3
WIDE_HEATMAP = 20  # datasets above which the per-dataset heatmap uses narrow columns
FORMATS = (".png", ".svg")
SVG_SALT = "vl-peft-bench"  # fixed ids in SVG files: an unchanged figure rewrites to identical bytes
LABEL_ITERATIONS = 200  # adjustText's default is a 1 s time limit, which makes placement depend on load
SECONDS_PER_HOUR = 3600.0

PanelCost = Callable[[pd.DataFrame], tuple[pd.Series, str]]
"""A panel's rows to their costs (the x values) and what the cost is (the axis label)."""


def write_figures(board: Leaderboard, figures_dir: Path) -> list[Path]:
    """Write ``ap_vs_params``, ``ap_vs_memory``, ``ap_vs_train_cost``, ``ap_per_dataset`` and, where rows were
    scored on their model's retention set, ``ap_vs_retention_loss`` as PNG and SVG; returns the paths."""
    figures = {
        "ap_vs_params": cost_figure(board, "trainable_params", "trainable parameters", log_x=True),
        "ap_vs_memory": cost_figure(board, "peak_memory_gib", f"peak memory (GiB, {_memory_kinds(board)})", log_x=False),
        "ap_vs_train_cost": train_cost_figure(board),
        "ap_per_dataset": heatmap_figure(board),
    }
    if board.has_retention:
        figures["ap_vs_retention_loss"] = retention_figure(board)
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
    """The primary suite score (with its 95% CI) against one cost column, one panel per (model, shots),
    with the Pareto front (best score for at most that cost) as a step line through its marked members."""
    return _cost_figure(board, cost_label, lambda panel: (panel[cost_column], cost_label), log_x=log_x)


def train_cost_figure(board: Leaderboard) -> Figure:
    """As :func:`cost_figure`, against what one cell of the row cost: its wall time (training, validation
    and the test evaluation) averaged over the row's cells, in GPU-hours for runs on CUDA and in
    CPU-seconds for runs on CPU. Seconds on a CPU and hours on a GPU are not one currency, so a panel
    holding both says so and shows plain seconds instead of converting either."""
    return _cost_figure(board, "training cost per cell", _train_cost, log_x=True)


def retention_figure(board: Leaderboard) -> Figure:
    """As :func:`cost_figure`, against what tuning cost on the model's retention set: the zero-shot row's
    retention minus the row's, in points (zero-shot sits at 0); the front is the best downstream score
    for at most that loss."""
    unit = f"retention loss ({board.metric} points lost on the retention set)"
    return _cost_figure(board, "retention loss", lambda panel: (100 * panel["retention_drop"], unit), log_x=False)


def _cost_figure(board: Leaderboard, cost_name: str, panel_cost: PanelCost, *, log_x: bool) -> Figure:
    groups = list(board.table.groupby(["model", "shots"], sort=False))
    columns = min(PANEL_COLUMNS, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)  # adjustText measures the labels with this canvas's renderer
    figure.suptitle(f"{board.primary.name} test {board.metric} against {cost_name}\n{setting_phrase(board)}")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    labelled = []
    for ax, ((model, shots), panel) in zip(axes, groups):
        cost, cost_label = panel_cost(panel)
        labelled.append((ax, _cost_panel(ax, panel, cost, board, log_x)))
        ax.set_title(f"{model}, {shots_title(shots)}")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(f"{board.primary.name} test {board.metric} (%)")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, labels in labelled:  # last: the labels move within the final layout of every panel
        _place_labels(ax, labels)
    return figure


def heatmap_figure(board: Leaderboard) -> Figure:
    """Per-dataset scores, rows in leaderboard order; a cell without a score is hatched, not coloured."""
    table = board.table
    values = 100 * table[[dataset_column(d, board.metric) for d in board.datasets]].to_numpy(dtype=float)
    n_rows, n_columns = values.shape
    # Narrower columns and smaller numbers for many datasets (RF100-VL's 100); the rotated names below
    # the cells need height of their own, or a one-row figure has no room left for its cells.
    wide = n_columns > WIDE_HEATMAP
    longest = max((len(name) for name in board.datasets), default=0)
    figure = Figure(figsize=(2.5 + (0.4 if wide else 0.8) * n_columns, 2.0 + 0.4 * n_rows + 0.06 * longest),
                    layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    for i, j in np.argwhere(np.isnan(values)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.75", linewidth=0))
    for i, j in np.argwhere(~np.isnan(values)):
        bright = image.norm(values[i, j]) > 0.6  # the top of viridis is yellow: dark text reads there
        ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=5 if wide else 8,
                color="black" if bright else "white")
    ax.set_xticks(range(n_columns), board.datasets, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), _row_labels(table))
    replicates = table[suite_columns(board.primary.name, board.metric).replicates]
    ax.set_title(f"test {board.metric} (%) per dataset; hatched: no result\n{setting_phrase(board, replicates)}")
    figure.colorbar(image, ax=ax, label=f"test {board.metric} (%)")
    return figure


def _cost_panel(ax: Axes, panel: pd.DataFrame, cost: pd.Series, board: Leaderboard, log_x: bool) -> list[Text]:
    """Draw one panel's points, error bars and Pareto front; returns the point labels, still to be placed."""
    columns = suite_columns(board.primary.name, board.metric)
    scored = panel[panel[columns.mean].notna() & cost.notna()]
    if scored.empty:
        ax.text(0.5, 0.5, "no complete seed replicate", ha="center", va="center", transform=ax.transAxes)
        return []
    cost = cost[scored.index].to_numpy(dtype=float)
    score = 100 * scored[columns.mean].to_numpy(dtype=float)
    error = 100 * scored[columns.ci95].to_numpy(dtype=float)
    with_interval = (scored[columns.n] > 1).to_numpy()  # one replicate: no bar rather than a bar of zero length
    if with_interval.any():
        ax.errorbar(cost[with_interval], score[with_interval], yerr=error[with_interval], fmt="none", ecolor="0.6",
                    capsize=3)
    front = pareto_front(cost, score)
    if not front.all():
        ax.scatter(cost[~front], score[~front], color="C0", zorder=3, label="method")
    ax.scatter(cost[front], score[front], color="C3", marker="D", zorder=3, label="Pareto front")
    order = np.argsort(cost[front])
    step_x = np.append(cost[front][order], cost.max())
    step_y = np.append(score[front][order], score[front][order][-1])
    ax.plot(step_x, step_y, drawstyle="steps-post", color="C3", linewidth=1)
    if log_x:
        _log_axis(ax, cost)
    ax.legend(loc="best", fontsize=8)  # "best" is chosen at drawing time, around the placed labels
    # out of the layout: the panels' sizes must not depend on where the labels start or end
    return [ax.text(x, y, label, fontsize=8, in_layout=False) for label, x, y in zip(scored["method"], cost, score)]


def _place_labels(ax: Axes, labels: list[Text]) -> None:
    """Move the labels off each other, the markers and the error bars, each joined to its point by a thin
    line where it had to move away; deterministic, as :data:`LABEL_ITERATIONS` fixes the work done."""
    if not labels:
        return
    adjust_text(labels, ax=ax, objects=_obstacles(ax), iter_lim=LABEL_ITERATIONS, expand=(1.1, 1.3),
                arrowprops=dict(arrowstyle="-", color="0.5", linewidth=0.5, shrinkA=1, shrinkB=4))


def _obstacles(ax: Axes) -> list[Bbox]:
    """What a label must not cover, in data coordinates: each marker's extent and each error bar."""
    boxes = []
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            boxes += get_bboxes_pathcollection(collection, ax)
        elif isinstance(collection, LineCollection):
            boxes += [Bbox(segment) for segment in collection.get_segments()]
    return boxes


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


def _train_cost(panel: pd.DataFrame) -> tuple[pd.Series, str]:
    """A panel's mean wall time per cell in the unit of the device its runs used (see :func:`train_cost_figure`)."""
    devices = {_device(kind) for kinds in panel["peak_memory_kind"].dropna() for kind in kinds.split("+")}
    if devices == {"GPU"}:
        return panel["wall_s"] / SECONDS_PER_HOUR, "GPU-hours per cell (wall time on CUDA)"
    if devices == {"CPU"}:
        return panel["wall_s"], "CPU-seconds per cell (wall time)"
    return panel["wall_s"], "wall-clock seconds per cell; GPU and CPU runs mixed, not comparable"


def _device(memory_kind: str) -> str:
    """``GPU`` where CUDA's allocator was metered, ``CPU`` where the process RSS was (``rss``, ``rss-process``)."""
    return "GPU" if memory_kind == "cuda" else "CPU"


def setting_phrase(board: Leaderboard, replicates: pd.Series | None = None) -> str:
    """What produced a figure's numbers, for its title: the protocol, the number of seed replicates per
    row (``replicates``, counting rows that have any; default: the primary suite's complete ones) and how
    hyper-parameters were obtained."""
    if replicates is None:
        replicates = board.table[suite_columns(board.primary.name, board.metric).n]
    tunings = sorted(set("; ".join(board.table["tuning"]).split("; ")))
    return f"{board.protocol_phrase}; {_replicates_phrase(replicates)}\nhyper-parameters: {'; '.join(tunings)}"


def _replicates_phrase(replicates: pd.Series) -> str:
    """``3 seed replicates per method``, or ``1–3 ...`` where rows have different numbers."""
    present = replicates[replicates > 0]
    if present.empty:
        return "no complete seed replicate"
    low, high = int(present.min()), int(present.max())
    count = str(low) if low == high else f"{low}–{high}"
    return f"{count} seed replicate{'s' if high > 1 else ''} per method"


def shots_title(shots: str) -> str:
    """``10-shot`` or ``full data``: a panel title."""
    return "full data" if shots == FULL_DATA else f"{shots}-shot"
