"""Leaderboards and figures from stored run records, checked against numbers worked out by hand."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.catalog import SuiteSpec
from bench.data.holdout import HELD_OUT
from bench.errors import BenchError
from bench.report import (
    ReportFiles, build_leaderboard, by_shots_table, mean_interval, pareto_front, runs_frame, write_report,
)
from bench.report.leaderboard import replicate_scores, suite_columns
from bench.report.tables import MISSING
from bench.runs.record import Cost, RunRecord, RunSpec

MINI = SuiteSpec("mini", ("a", "b"), description="two datasets")
T_975_2 = 4.302652729911275  # Student-t 0.975 quantile, 2 degrees of freedom
T_975_1 = 12.706204736174707  # ... 1 degree of freedom
GIB = 1 << 30


def make_record(
    method: str,
    dataset: str,
    ap: float,
    *,
    seed: int = 0,
    shots: int | None = 10,
    model: str = "glip-t",
    params: int = 1_000,
    memory_gib: float = 2.0,
    metrics: dict[str, float] | None = None,
) -> RunRecord:
    """A finished run of ``method`` on ``dataset`` with test AP ``ap``; ``seed`` is both split and train seed."""
    spec = RunSpec(model=model, method=method, dataset=dataset, shots=shots, weights=f"/weights/{model}.pth",
                   split_seed=None if shots is None else seed, train_seed=seed)
    test = {"AP": ap, "AP50": min(1.0, 1.5 * ap)} if metrics is None else metrics
    return RunRecord(
        key=f"{model}-{method}-{dataset}-{shots}-{seed}",
        spec=spec,
        val=test,
        test=test,
        best_step=10,
        cost=Cost(trainable_params=params, effective_params=params, base_params=1_000_000, stored_bytes=4 * params,
                  peak_memory_bytes=int(memory_gib * GIB), peak_memory_kind="cuda", train_images_per_s=8.0,
                  eval_images_per_s=20.0, train_steps=100, wall_s=30.0),
        provenance={},
    )


def sweep(method: str, scores: dict[str, list[float]], **fields: Any) -> list[RunRecord]:
    """Records of one method: ``scores[dataset][seed]`` is the AP of that seed on that dataset."""
    return [make_record(method, dataset, ap, seed=seed, **fields)
            for dataset, per_seed in scores.items() for seed, ap in enumerate(per_seed)]


# sdpt: three complete replicates, suite scores 0.40, 0.44, 0.51
# lora: dataset b lacks seed 2, so two complete replicates (0.40, 0.44) out of three
# vpt: one replicate (0.25); adapter: never ran on b, so no suite score at all
RECORDS = [
    *sweep("sdpt", {"a": [0.40, 0.42, 0.50], "b": [0.40, 0.46, 0.52]}, params=4_000),
    *sweep("lora", {"a": [0.30, 0.34, 0.38], "b": [0.50, 0.54]}, params=200_000, memory_gib=3.0),
    *sweep("vpt", {"a": [0.20], "b": [0.30]}, params=50_000, memory_gib=2.5),
    *sweep("adapter", {"a": [0.60]}, params=100_000),
]


@pytest.fixture(scope="module")
def board():
    return build_leaderboard(runs_frame(RECORDS), [MINI], "AP")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(RECORDS, tmp_path_factory.mktemp("results"), suites=[MINI])


def row(board, method: str) -> pd.Series:
    return board.table.set_index("method").loc[method]


def test_per_dataset_column_is_the_mean_over_seeds(board) -> None:
    assert row(board, "sdpt")["a AP"] == pytest.approx((0.40 + 0.42 + 0.50) / 3)
    assert row(board, "lora")["b AP"] == pytest.approx((0.50 + 0.54) / 2)  # the seed that ran on b


def test_suite_score_is_computed_per_replicate() -> None:
    scores = replicate_scores(runs_frame(RECORDS), MINI).set_index(["method", "train_seed"])["score"]
    assert scores["sdpt", 0] == pytest.approx(0.40)
    assert scores["sdpt", 1] == pytest.approx(0.44)
    assert scores["sdpt", 2] == pytest.approx(0.51)
    assert math.isnan(scores["lora", 2])  # b was not run with seed 2


def test_suite_mean_and_student_t_interval(board) -> None:
    mean = (0.40 + 0.44 + 0.51) / 3
    sd = math.sqrt(((0.40 - mean) ** 2 + (0.44 - mean) ** 2 + (0.51 - mean) ** 2) / 2)
    columns = suite_columns("mini", "AP")
    sdpt = row(board, "sdpt")
    assert sdpt[columns.mean] == pytest.approx(0.45)
    assert sdpt[columns.ci95] == pytest.approx(T_975_2 * sd / math.sqrt(3))
    assert (sdpt[columns.n], sdpt[columns.replicates]) == (3, 3)


def test_an_incomplete_replicate_is_left_out_of_the_suite_score(board) -> None:
    columns = suite_columns("mini", "AP")
    lora = row(board, "lora")
    assert (lora[columns.n], lora[columns.replicates]) == (2, 3)
    assert lora[columns.mean] == pytest.approx(0.42)
    assert lora[columns.ci95] == pytest.approx(T_975_1 * math.sqrt(2 * 0.02**2) / math.sqrt(2))


def test_one_replicate_gives_no_interval(board) -> None:
    columns = suite_columns("mini", "AP")
    vpt = row(board, "vpt")
    assert vpt[columns.mean] == pytest.approx(0.25)
    assert math.isnan(vpt[columns.ci95])
    assert vpt[columns.n] == 1
    assert math.isnan(mean_interval([0.3]).half_width)  # unknown, not 0


def test_rows_are_sorted_by_suite_score_with_missing_last(board) -> None:
    assert list(board.table["method"]) == ["sdpt", "lora", "vpt", "adapter"]


def test_missing_suite_score_is_empty_in_the_csv_not_zero(report: ReportFiles) -> None:
    csv = pd.read_csv(report.leaderboard_csv).set_index("method")
    columns = suite_columns("mini", "AP")
    assert math.isnan(csv.loc["adapter", columns.mean])
    assert math.isnan(csv.loc["adapter", "b AP"])
    assert csv.loc["adapter", columns.n] == 0
    assert csv.loc["sdpt", "a AP"] == pytest.approx(0.44)  # raw fractions, unrounded


def test_markdown_shows_rows_intervals_and_the_missing_marker(report: ReportFiles, board) -> None:
    text = report.leaderboard_markdown.read_text()
    lines = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| glip-t")}
    assert set(lines) == {"sdpt", "lora", "vpt", "adapter"}
    half_width = 100 * row(board, "sdpt")[suite_columns("mini", "AP").ci95]
    assert f"45.0 ± {half_width:.1f}" in lines["sdpt"]
    assert "| 2/3 " in lines["lora"]
    assert "25.0 (n=1)" in lines["vpt"] and "±" not in lines["vpt"]
    assert f"| {MISSING} " in lines["adapter"]
    assert f"{MISSING}: no finished run" in text  # the note under the table


def test_by_shots_table_orders_shots_numerically_with_full_last(tmp_path: Path) -> None:
    records = [
        *sweep("sdpt", {"a": [0.30], "b": [0.50]}, shots=10),
        *sweep("sdpt", {"a": [0.20], "b": [0.40]}, shots=3),
        *sweep("sdpt", {"a": [0.50], "b": [0.70]}, shots=None),
        *sweep("lora", {"a": [0.10, 0.20], "b": [0.30, 0.40]}, shots=1),
    ]
    files = write_report(records, tmp_path, suites=[MINI])
    table = by_shots_table(build_leaderboard(runs_frame(records), [MINI], "AP")).set_index("method")
    assert [c for c in table.columns if c.endswith(" mean")] == ["1 mean", "3 mean", "10 mean", "full mean"]
    assert table.loc["sdpt", "3 mean"] == pytest.approx(0.30)
    assert table.loc["sdpt", "full mean"] == pytest.approx(0.60)
    assert table.loc["lora", "1 mean"] == pytest.approx(0.25)
    assert math.isnan(table.loc["lora", "10 mean"])
    header = files.by_shots_markdown.read_text().splitlines()[0]
    assert header.index("1-shot") < header.index("3-shot") < header.index("10-shot") < header.index("full")


def test_pareto_front_is_the_best_score_for_at_most_that_cost() -> None:
    costs = [0, 10, 50, 100, 100, 1000, 5]
    scores = [0.20, 0.30, 0.30, 0.50, 0.40, 0.45, math.nan]
    assert list(pareto_front(costs, scores)) == [True, True, False, True, False, False, False]


def test_figures_are_written_as_png_and_svg(report: ReportFiles) -> None:
    names = sorted(path.name for path in report.figures)
    stems = ("ap_vs_params", "ap_vs_memory", "ap_vs_train_cost", "ap_per_dataset")
    assert names == sorted(f"{stem}.{ext}" for stem in stems for ext in ("png", "svg"))
    for path in report.figures:
        assert path.parent.name == "figures"
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data[:1000]


def test_models_are_kept_apart(tmp_path: Path) -> None:
    records = [*sweep("sdpt", {"a": [0.30], "b": [0.50]}), *sweep("sdpt", {"a": [0.10], "b": [0.20]}, model="glip-l")]
    files = write_report(records, tmp_path, suites=[MINI])
    assert list(zip(files.leaderboard["model"], files.leaderboard["method"])) == [("glip-l", "sdpt"), ("glip-t", "sdpt")]


def test_full_data_runs_are_replicates_of_their_train_seed() -> None:
    records = sweep("full", {"a": [0.40, 0.50], "b": [0.60, 0.70]}, shots=None)  # no split seed
    full = row(build_leaderboard(runs_frame(records), [MINI], "AP"), "full")
    assert full[suite_columns("mini", "AP").n] == 2
    assert full[suite_columns("mini", "AP").mean] == pytest.approx(0.55)


def test_an_unmeasured_peak_memory_is_missing_not_zero() -> None:
    records = sweep("sdpt", {"a": [0.3]}, memory_gib=0.0)  # the CPU meter stores 0 where it cannot measure
    assert math.isnan(build_leaderboard(runs_frame(records), [], "AP").table.loc[0, "peak_memory_gib"])


def test_zero_records_say_where_runs_were_looked_for_and_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"No finished runs were found in .*runs/done.*python run_bench.py --methods"):
        write_report([], tmp_path)


def test_a_missing_metric_names_the_available_ones(tmp_path: Path) -> None:
    records = [make_record("sdpt", "a", 0.3), make_record("lora", "a", 0.3, metrics={"AP50": 0.5})]
    with pytest.raises(BenchError, match=r"1 of 2 finished runs have no test metric 'AP' .* hold AP, AP50"):
        write_report(records, tmp_path)


def test_two_records_of_one_run_are_refused() -> None:
    first = make_record("sdpt", "a", 0.3)
    again = dataclasses.replace(first, key="other-key")
    with pytest.raises(BenchError, match="not seed replicates"):
        runs_frame([first, again])


def with_protocol(records: list[RunRecord], name: str, **overrides: Any) -> list[RunRecord]:
    return [dataclasses.replace(r, spec=dataclasses.replace(r.spec, protocol=name, protocol_overrides=overrides))
            for r in records]


def test_leaderboard_shows_effective_params_and_stored_mb(report: ReportFiles, board) -> None:
    lora = row(board, "lora")
    assert lora["effective_params"] == 200_000
    assert lora["stored_mb"] == pytest.approx(0.8)  # 4 bytes per parameter, 10^6 bytes per MB
    text = report.leaderboard_markdown.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header.index("trainable params") < header.index("effective params") < header.index("stored MB")
    lines = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| glip-t")}
    assert "| 200K " in lines["lora"] and "| 0.8 " in lines["lora"]
    assert "| 0.016 " in lines["sdpt"]  # 4,000 parameters: not rounded away to 0.00


def test_protocol_and_overrides_head_the_leaderboard_and_every_figure(tmp_path: Path) -> None:
    from bench.report.cd_diagram import critical_difference_figure
    from bench.report.figures import cost_figure, heatmap_figure
    from bench.report.ranks import rank_comparisons

    records = with_protocol(RECORDS, "shapes", max_steps=50, amp=False)
    files = write_report(records, tmp_path, suites=[MINI])
    phrase = "protocol shapes (amp=false, max_steps=50)"
    assert files.leaderboard_markdown.read_text().splitlines()[0] == f"# Leaderboard: test AP, {phrase}; hyper-parameters: defaults"
    assert files.comparisons_markdown.read_text().splitlines()[0] == f"# Comparisons: test AP, {phrase}"
    board = build_leaderboard(runs_frame(records), [MINI], "AP")
    assert phrase in cost_figure(board, "trainable_params", "trainable parameters", log_x=True).get_suptitle()
    assert phrase in heatmap_figure(board).axes[0].get_title()
    diagram = critical_difference_figure(rank_comparisons(runs_frame(records)), board.protocol_phrase)
    assert phrase in diagram.get_suptitle()


def test_several_protocols_are_all_named() -> None:
    records = [*with_protocol(sweep("sdpt", {"a": [0.3]}), "default"),
               *with_protocol(sweep("lora", {"a": [0.3]}), "shapes", max_steps=50)]
    board = build_leaderboard(runs_frame(records), [], "AP")
    assert board.protocol_phrase == "protocols default; shapes (max_steps=50)"
    assert row(board, "lora")["protocol"] == "shapes (max_steps=50)"


def test_the_leaderboard_says_where_validation_was_held_out_and_which_models_were_random(tmp_path: Path) -> None:
    records = sweep("sdpt", {"a": [0.30], "b": [0.50]})
    records[0] = dataclasses.replace(records[0], spec=dataclasses.replace(records[0].spec, validation=HELD_OUT))
    records += [dataclasses.replace(r, key=r.key + "-random", spec=dataclasses.replace(r.spec, weights=None))
                for r in sweep("lora", {"a": [0.01], "b": [0.02]})]
    files = write_report(records, tmp_path, suites=[MINI])
    text = files.leaderboard_markdown.read_text()
    assert "Validation of a was held out of the training images" in text and "80% of the training images" in text
    assert "| glip-t (random init) | lora" in text and "were randomly initialised (--random-init)" in text
