"""The report's figures as a reader meets them: labels that do not hide each other or the points, error
bars exactly where there is an interval, the setting behind the numbers in every title, and training
cost in the unit of the device the runs used."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from bench.report import build_leaderboard, runs_frame
from bench.report.figures import cost_figure, heatmap_figure, train_cost_figure, write_figures
from bench.report.leaderboard import Leaderboard
from bench.runs.record import SELECTED, RunRecord
from tests.test_report import MINI, sweep

# Six methods within 12% of each other's cost and 0.3 AP points of each other's score, between a
# zero-shot baseline and full fine-tuning that set the axes: the six labels start on top of each
# other, as linear-probe and vpt did in the shapes benchmark.
CROWDED = {"linear-probe": 4_551, "vpt": 4_700, "maple": 4_800, "coop": 4_900, "sdpt": 5_000, "prompt": 5_100}
ENDS = {"zero-shot": (0, 0.10), "full": (2_000_000, 0.50)}


def crowded_board() -> Leaderboard:
    records = [record for i, (method, params) in enumerate(CROWDED.items())
               for record in sweep(method, {"a": [0.300 + 0.0005 * i], "b": [0.300]}, params=params)]
    records += [record for method, (params, ap) in ENDS.items() for record in sweep(method, {"a": [ap], "b": [ap]},
                                                                                     params=params)]
    return build_leaderboard(runs_frame(records), [MINI], "AP")


def drawn(figure: Figure) -> Figure:
    """The figure after a full Agg draw, so that every extent is final."""
    FigureCanvasAgg(figure).draw()
    return figure


def label_boxes(ax: Axes, labels: list[str]) -> dict[str, Bbox]:
    return {text.get_text(): text.get_window_extent() for text in ax.texts if text.get_text() in labels}


def marker_boxes(ax: Axes) -> list[Bbox]:
    """Each marker's extent in display units (size ``s`` is the marker's area in points squared)."""
    boxes = []
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            radius = np.sqrt(collection.get_sizes()[0]) / 2 * ax.figure.dpi / 72
            for x, y in ax.transData.transform(collection.get_offsets()):
                boxes.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))
    return boxes


def with_tuning(records: list[RunRecord]) -> list[RunRecord]:
    tuning = {"stage": SELECTED, "fields": ["lr"], "trials": 3, "scope": "dataset", "values": {"lr": 0.01}}
    return [dataclasses.replace(r, spec=dataclasses.replace(r.spec, tuning=tuning)) for r in records]


def with_cost(records: list[RunRecord], *, wall_s: float, kind: str) -> list[RunRecord]:
    return [dataclasses.replace(r, cost=dataclasses.replace(r.cost, wall_s=wall_s, peak_memory_kind=kind))
            for r in records]


def test_crowded_labels_overlap_neither_each_other_nor_the_markers() -> None:
    figure = drawn(cost_figure(crowded_board(), "trainable_params", "trainable parameters", log_x=True))
    ax = figure.axes[0]
    boxes = label_boxes(ax, [*CROWDED, *ENDS])
    assert set(boxes) == {*CROWDED, *ENDS}
    for (first, a), (second, b) in itertools.combinations(boxes.items(), 2):
        assert not a.overlaps(b), f"the labels {first} and {second} overlap"
    for name, box in boxes.items():
        assert not any(box.overlaps(marker) for marker in marker_boxes(ax)), f"the label {name} covers a marker"


def test_labels_are_placed_the_same_way_every_time(tmp_path: Path) -> None:
    board = crowded_board()
    first = write_figures(board, tmp_path / "first")
    second = write_figures(board, tmp_path / "second")
    for a, b in zip(first, second):
        if a.suffix == ".svg":
            assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two writes"


def error_bars(figure: Figure) -> list[LineCollection]:
    return [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]


def test_error_bars_are_drawn_for_the_rows_with_several_replicates_only() -> None:
    records = [*sweep("sdpt", {"a": [0.40, 0.42, 0.50], "b": [0.40, 0.46, 0.52]}, params=4_000),
               *sweep("vpt", {"a": [0.20], "b": [0.30]}, params=50_000)]
    figure = cost_figure(build_leaderboard(runs_frame(records), [MINI], "AP"), "trainable_params", "params", log_x=True)
    (bars,) = error_bars(figure)
    assert len(bars.get_segments()) == 1  # sdpt's three replicates; vpt's one has no interval


def test_no_error_bar_at_all_when_every_row_has_one_replicate() -> None:
    records = [*sweep("sdpt", {"a": [0.40], "b": [0.40]}, params=4_000), *sweep("vpt", {"a": [0.2], "b": [0.3]})]
    figure = cost_figure(build_leaderboard(runs_frame(records), [MINI], "AP"), "trainable_params", "params", log_x=True)
    assert error_bars(figure) == []


def test_every_figure_title_names_protocol_tuning_budget_and_seed_replicates() -> None:
    records = [*with_tuning(sweep("sdpt", {"a": [0.40, 0.42, 0.50], "b": [0.40, 0.46, 0.52]})),
               *sweep("zero-shot", {"a": [0.10, 0.10, 0.10], "b": [0.20, 0.20, 0.20]}, params=0)]
    board = build_leaderboard(runs_frame(records), [MINI], "AP")
    titles = [
        cost_figure(board, "trainable_params", "trainable parameters", log_x=True).get_suptitle(),
        cost_figure(board, "peak_memory_gib", "peak memory", log_x=False).get_suptitle(),
        train_cost_figure(board).get_suptitle(),
        heatmap_figure(board).axes[0].get_title(),
    ]
    for title in titles:
        assert "protocol default" in title
        assert "hyper-parameters: defaults; lr tuned on val, 3 trials per dataset" in title
        assert "3 seed replicates" in title


def test_a_varying_number_of_replicates_is_given_as_a_range() -> None:
    records = [*sweep("sdpt", {"a": [0.4, 0.4, 0.5], "b": [0.4, 0.5, 0.5]}), *sweep("vpt", {"a": [0.2], "b": [0.3]})]
    board = build_leaderboard(runs_frame(records), [MINI], "AP")
    assert "1–3 seed replicates" in train_cost_figure(board).get_suptitle()


def plotted_costs(ax: Axes) -> list[float]:
    return sorted(x for c in ax.collections if isinstance(c, PathCollection) for x, _ in c.get_offsets())


def test_training_cost_on_cuda_is_in_gpu_hours_per_cell() -> None:
    records = [*with_cost(sweep("sdpt", {"a": [0.4], "b": [0.5]}), wall_s=1_800.0, kind="cuda"),
               *with_cost(sweep("full", {"a": [0.5]}), wall_s=7_200.0, kind="cuda"),
               *with_cost(sweep("full", {"b": [0.6]}), wall_s=3_600.0, kind="cuda")]
    board = build_leaderboard(runs_frame(records), [MINI], "AP")
    assert board.table.set_index("method").loc["full", "wall_s"] == pytest.approx(5_400.0)  # mean over its cells
    ax = train_cost_figure(board).axes[0]
    assert plotted_costs(ax) == pytest.approx([0.5, 1.5])
    assert "GPU-hours" in ax.get_xlabel()


def test_training_cost_on_cpu_is_in_cpu_seconds_per_cell() -> None:
    records = with_cost(sweep("sdpt", {"a": [0.4], "b": [0.5]}), wall_s=90.0, kind="rss")
    ax = train_cost_figure(build_leaderboard(runs_frame(records), [MINI], "AP")).axes[0]
    assert plotted_costs(ax) == pytest.approx([90.0])
    assert "CPU-seconds" in ax.get_xlabel()


def test_training_cost_of_gpu_and_cpu_runs_in_one_panel_says_they_are_mixed() -> None:
    records = [*with_cost(sweep("sdpt", {"a": [0.4], "b": [0.5]}), wall_s=60.0, kind="cuda"),
               *with_cost(sweep("vpt", {"a": [0.3], "b": [0.4]}), wall_s=900.0, kind="rss-process")]
    ax = train_cost_figure(build_leaderboard(runs_frame(records), [MINI], "AP")).axes[0]
    assert plotted_costs(ax) == pytest.approx([60.0, 900.0])  # both in seconds, neither converted
    assert "mixed" in ax.get_xlabel() and "GPU" in ax.get_xlabel() and "CPU" in ax.get_xlabel()


def test_the_training_cost_figure_is_written(tmp_path: Path) -> None:
    names = {path.name for path in write_figures(crowded_board(), tmp_path)}
    assert {"ap_vs_train_cost.png", "ap_vs_train_cost.svg"} <= names
