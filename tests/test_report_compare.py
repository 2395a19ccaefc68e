"""Paired comparisons, average ranks, Friedman and Nemenyi, checked against numbers worked out by hand
and against the tables of Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data Sets"."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.catalog import SuiteSpec
from bench.errors import BenchError
from bench.report import build_leaderboard, compare_to_reference, holm, rank_comparisons, runs_frame, write_report
from bench.report.compare import paired_difference, paired_differences
from bench.report.ranks import critical_difference, indistinct_groups, nemenyi_q
from bench.runs.record import RunRecord
from tests.test_report import sweep

FOUR = SuiteSpec("four", ("d1", "d2", "d3", "d4"), description="four datasets")
SEED_SHIFT = 0.02  # seed 1 scores seed 0 + 0.02 for every method: the per-dataset order stays that of seed 0


def two_seeds(method: str, seed0: dict[str, float]) -> list[RunRecord]:
    return sweep(method, {dataset: [ap, ap + SEED_SHIFT] for dataset, ap in seed0.items()})


# Per dataset (rank 1 best):  d1: A>B>C   d2: A>C>B   d3: B>A>C   d4: A>B>C
# average ranks: sdpt (1+1+2+1)/4 = 1.25, lora (2+3+1+2)/4 = 2.0, vpt (3+2+3+3)/4 = 2.75
# differences to sdpt in AP points, each for both seeds: lora -5, -10, +5, -5; vpt -10, -5, -10, -10
RECORDS = [
    *two_seeds("sdpt", {"d1": 0.50, "d2": 0.60, "d3": 0.40, "d4": 0.70}),
    *two_seeds("lora", {"d1": 0.45, "d2": 0.50, "d3": 0.45, "d4": 0.65}),
    *two_seeds("vpt", {"d1": 0.40, "d2": 0.55, "d3": 0.30, "d4": 0.60}),
]
RANKS = {"sdpt": 1.25, "lora": 2.0, "vpt": 2.75}


def untrained(record: RunRecord) -> RunRecord:
    """``record`` as a method that trains nothing (zero-shot): 0 training steps."""
    return dataclasses.replace(record, cost=dataclasses.replace(record.cost, train_steps=0))


def table_lines(markdown: str) -> dict[str, str]:
    """The rows of the markdown tables in ``markdown`` by their first cell."""
    return {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}


def only(comparisons: list, **identity: str):
    matches = [c for c in comparisons if all(getattr(c, k) == v for k, v in identity.items())]
    assert len(matches) == 1
    return matches[0]


# ------------------------------------------------------------------------------------------ ranks


def test_average_ranks_by_hand() -> None:
    (ranks,) = rank_comparisons(runs_frame(RECORDS))
    assert ranks.average_ranks.to_dict() == pytest.approx(RANKS)
    assert list(ranks.average_ranks.index) == ["sdpt", "lora", "vpt"]  # best first
    assert ranks.datasets == ("d1", "d2", "d3", "d4")


def test_tied_scores_share_the_average_rank() -> None:
    records = [*sweep("sdpt", {"d1": [0.5], "d2": [0.5]}), *sweep("lora", {"d1": [0.5], "d2": [0.4]}),
               *sweep("vpt", {"d1": [0.3], "d2": [0.6]})]
    (ranks,) = rank_comparisons(runs_frame(records))
    # d1: sdpt and lora tie for ranks 1 and 2 -> 1.5 each, vpt 3; d2: vpt 1, sdpt 2, lora 3
    assert ranks.average_ranks.to_dict() == pytest.approx({"sdpt": 1.75, "lora": 2.25, "vpt": 2.0})


def test_friedman_statistic_is_demsars_formula() -> None:
    (ranks,) = rank_comparisons(runs_frame(RECORDS))
    k, n = 3, 4
    r = np.array(list(RANKS.values()))
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)  # Demšar (2006), section 3.2.2
    assert chi2 == pytest.approx(4.5)
    assert ranks.friedman_chi2 == pytest.approx(chi2)
    assert ranks.friedman_p == pytest.approx(math.exp(-chi2 / 2))  # chi-square with 2 df: p = exp(-x/2)
    assert ranks.critical_difference == pytest.approx(2.343 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    assert ranks.note == ""


@pytest.mark.parametrize("k, q", [(3, 2.343), (4, 2.569), (5, 2.728)])
def test_nemenyi_q_and_cd_match_demsars_table(k: int, q: float) -> None:
    assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)  # the table truncates to three decimals (2.3437: 2.343)
    assert critical_difference(k, 10) == pytest.approx(q * math.sqrt(k * (k + 1) / 60), abs=1e-3)


def test_cd_of_demsars_worked_example() -> None:
    assert critical_difference(4, 14) == pytest.approx(1.25, abs=5e-3)  # Demšar (2006), section 3.2.2: k=4, N=14


def test_friedman_needs_three_methods_and_two_datasets() -> None:
    two_methods = [r for r in RECORDS if r.spec.method != "vpt"]
    (ranks,) = rank_comparisons(runs_frame(two_methods))
    assert math.isnan(ranks.friedman_p) and math.isnan(ranks.critical_difference)
    assert "only 2 methods" in ranks.note

    one_dataset = [r for r in RECORDS if r.spec.dataset == "d1"]
    (ranks,) = rank_comparisons(runs_frame(one_dataset))
    assert math.isnan(ranks.friedman_p)
    assert "only 1 dataset" in ranks.note


def test_friedman_p_that_cannot_be_significant_is_not_shown() -> None:
    # k = 3, N = 2: the largest chi2 is N(k-1) = 4, p = exp(-2) = 0.135 > 0.05 whatever the scores
    records = [r for r in RECORDS if r.spec.dataset in ("d1", "d4")]
    (ranks,) = rank_comparisons(runs_frame(records))
    assert ranks.friedman_chi2 == pytest.approx(4.0)  # both datasets rank sdpt > lora > vpt
    assert math.isnan(ranks.friedman_p)
    assert "too few datasets" in ranks.note and f"{math.exp(-2):.3g}" in ranks.note


def test_ties_on_every_dataset_are_no_test() -> None:
    records = [*sweep("sdpt", {"d1": [0.0], "d2": [0.0]}), *sweep("lora", {"d1": [0.0], "d2": [0.0]}),
               *sweep("vpt", {"d1": [0.0], "d2": [0.0]})]
    (ranks,) = rank_comparisons(runs_frame(records))
    assert ranks.average_ranks.to_dict() == pytest.approx({"sdpt": 2.0, "lora": 2.0, "vpt": 2.0})
    assert math.isnan(ranks.friedman_chi2) and "ties on every dataset" in ranks.note


def test_datasets_lacking_a_method_are_left_out_of_the_ranks() -> None:
    records = [r for r in RECORDS if not (r.spec.method == "vpt" and r.spec.dataset == "d4")]
    (ranks,) = rank_comparisons(runs_frame(records))
    assert ranks.datasets == ("d1", "d2", "d3")
    assert ranks.left_out == {"d4": ("vpt",)}


def test_indistinct_groups_are_maximal_runs_within_cd() -> None:
    ranks = [1.12, 1.88, 3.0, 4.12, 4.88, 6.0]
    assert indistinct_groups(ranks, 2.67) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert indistinct_groups(ranks, 10.0) == [(0, 5)]
    assert indistinct_groups(ranks, 0.5) == []
    assert indistinct_groups([1.0, 2.0, 3.0], 1.0) == []  # a difference of exactly CD is significant


# ------------------------------------------------------------------------------------------ paired


def test_wilcoxon_p_of_a_known_case() -> None:
    # |d| ranks 1..6, the negative one has rank 6: W- = 6. Of the 2^6 = 64 sign patterns, 14 have a
    # negative rank sum <= 6 ({}, {1}..{6}, {1,2}, {1,3}, {1,4}, {1,5}, {2,3}, {2,4}, {1,2,3}), so the
    # exact two-sided p is 2 * 14 / 64.
    result = paired_difference([1.0, 2.0, 3.0, 4.0, 5.0, -6.0])
    assert result.wilcoxon_p == pytest.approx(28 / 64)
    assert result.mean == pytest.approx(9 / 6)
    assert result.note == ""
    assert paired_difference([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).wilcoxon_p == pytest.approx(2 / 64)


def test_too_few_pairs_give_a_note_not_a_p() -> None:
    five = paired_difference([1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(five.wilcoxon_p)
    assert "too few pairs" in five.note and "0.0625" in five.note
    assert not math.isnan(five.ci95_low)  # the interval is still given

    zeros = paired_difference([0.0] * 8)
    assert math.isnan(zeros.wilcoxon_p) and math.isnan(zeros.ci95_low)
    assert "all differences are zero" in zeros.note

    # zero differences are discarded: six pairs with one zero are five usable ones
    assert "too few pairs" in paired_difference([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).note

    one = paired_difference([2.0])
    assert (one.pairs, one.mean) == (1, 2.0)
    assert "one pair" in one.note and math.isnan(one.ci95_low)

    none = paired_difference([])
    assert none.pairs == 0 and "no pairs" in none.note


def test_bootstrap_interval_is_reproducible_and_contains_the_mean() -> None:
    differences = [-5.0, -10.0, 5.0, -5.0, -3.0, -8.0, 7.0, -4.0]
    first, again = paired_difference(differences), paired_difference(differences)
    assert (first.ci95_low, first.ci95_high) == (again.ci95_low, again.ci95_high)
    assert first.ci95_low < first.mean < first.ci95_high


def test_holm_by_hand() -> None:
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04, raised to 0.06 (step-down is monotone)
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])  # not a test, and not counted in m
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_keeps_the_order_of_the_raw_p_values() -> None:
    raw = np.random.default_rng(0).uniform(0, 0.2, size=12)
    adjusted = holm(raw)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1)


def test_pairs_match_dataset_and_replicate() -> None:
    frame = runs_frame(RECORDS)
    differences, broadcast = paired_differences(frame, "lora", "sdpt")
    assert broadcast is None
    assert sorted(differences) == pytest.approx(sorted([-5, -5, -10, -10, 5, 5, -5, -5]))


def test_an_untrained_single_replicate_method_is_broadcast() -> None:
    zero_shot = [untrained(r) for r in sweep("zero-shot", {"d1": [0.30], "d2": [0.40]})]  # seed 0 only
    frame = runs_frame([*zero_shot, *[r for r in RECORDS if r.spec.dataset in ("d1", "d2")]])
    differences, broadcast = paired_differences(frame, "zero-shot", "sdpt")
    assert broadcast == "zero-shot"
    # d1: 30 - 50, 30 - 52; d2: 40 - 60, 40 - 62
    assert sorted(differences) == pytest.approx([-22, -22, -20, -20])
    reverse, broadcast = paired_differences(frame, "sdpt", "zero-shot")
    assert broadcast == "zero-shot" and sorted(reverse) == pytest.approx([20, 20, 22, 22])


def test_a_trained_single_seed_method_is_matched_on_its_replicate() -> None:
    vpt = sweep("vpt", {"d1": [0.30], "d2": [0.40]})  # one seed, but it trains: its seed matters
    frame = runs_frame([*vpt, *[r for r in RECORDS if r.spec.method != "vpt" and r.spec.dataset in ("d1", "d2")]])
    differences, broadcast = paired_differences(frame, "vpt", "sdpt")
    assert broadcast is None
    assert sorted(differences) == pytest.approx([-20, -20])  # seed 0 only


def test_reference_defaults_to_the_best_row_of_each_group() -> None:
    frame = runs_frame(RECORDS)
    board = build_leaderboard(frame, [FOUR], "AP")
    (group,) = compare_to_reference(frame, board)
    assert group.reference == "sdpt" and "best four suite AP" in group.chosen
    table = group.table.set_index("method")
    assert list(table.index) == ["lora", "vpt"]
    assert table.loc["lora", "mean_difference"] == pytest.approx(-3.75)
    assert table.loc["vpt", "mean_difference"] == pytest.approx(-8.75)
    assert table.loc["vpt", "wilcoxon_p"] == pytest.approx(2 / 2**8)  # 8 pairs, all negative
    assert table.loc["vpt", "holm_p"] == pytest.approx(2 * 2 / 2**8)  # the smaller of two p-values, times 2
    assert table.loc["lora", "holm_p"] == pytest.approx(max(table.loc["lora", "wilcoxon_p"], 4 / 2**8))


def test_a_named_reference_is_used_and_an_unknown_one_refused() -> None:
    frame = runs_frame(RECORDS)
    board = build_leaderboard(frame, [FOUR], "AP")
    (group,) = compare_to_reference(frame, board, reference="lora")
    assert (group.reference, group.chosen) == ("lora", "given")
    assert group.table.set_index("method").loc["sdpt", "mean_difference"] == pytest.approx(3.75)
    with pytest.raises(BenchError, match=r"Reference method 'lorra' .* it has lora, sdpt, vpt"):
        compare_to_reference(frame, board, reference="lorra")


def test_a_group_without_the_named_reference_says_so() -> None:
    records = [*RECORDS, *sweep("vpt", {"d1": [0.3], "d2": [0.4]}, shots=1)]
    frame = runs_frame(records)
    groups = compare_to_reference(frame, build_leaderboard(frame, [FOUR], "AP"), reference="lora")
    one_shot = only(groups, shots="1")
    assert one_shot.table.empty and "lora has no run here" in one_shot.note


# ------------------------------------------------------------------------------------------ report files


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    zero_shot = [untrained(r) for r in sweep("zero-shot", {"d1": [0.10], "d2": [0.20], "d3": [0.15], "d4": [0.25]})]
    return write_report([*RECORDS, *zero_shot], tmp_path_factory.mktemp("results"), suites=[FOUR])


def test_report_writes_comparison_files_and_figure(report) -> None:
    assert report.comparisons_csv.name == "comparisons.csv" and report.comparisons_csv.is_file()
    assert report.comparisons_markdown.name == "comparisons.md" and report.comparisons_markdown.is_file()
    names = sorted(path.name for path in report.critical_difference_figures)
    assert names == ["critical_difference.png", "critical_difference.svg"]
    for path in report.critical_difference_figures:
        assert path.parent.name == "figures"
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data[:1000]


def test_comparisons_csv_holds_the_numbers(report) -> None:
    csv = pd.read_csv(report.comparisons_csv).set_index("method")
    assert list(csv.index) == ["sdpt", "lora", "vpt", "zero-shot"]  # leaderboard order
    assert set(csv["reference"]) == {"sdpt"}
    assert csv.loc["sdpt", "paired_note"] == "reference" and math.isnan(csv.loc["sdpt", "pairs"])
    assert csv.loc["lora", "mean_difference_points"] == pytest.approx(-3.75)
    assert csv.loc["vpt", "wilcoxon_p"] == pytest.approx(2 / 2**8)
    assert csv.loc["zero-shot", "broadcast"] == "zero-shot" and csv.loc["zero-shot", "pairs"] == 8
    # zero-shot is last on every dataset: sdpt 1.25, lora 2.0, vpt 2.75 as before, zero-shot 4
    assert csv["average_rank"].to_dict() == pytest.approx(RANKS | {"zero-shot": 4.0})
    r = np.array([1.25, 2.0, 2.75, 4.0])
    chi2 = 12 * 4 / (4 * 5) * (np.sum(r**2) - 4 * 25 / 4)
    assert csv["friedman_chi2"].iloc[0] == pytest.approx(chi2)
    assert csv["friedman_p"].iloc[0] == pytest.approx(stats.chi2.sf(chi2, 3))
    assert csv["nemenyi_cd"].iloc[0] == pytest.approx(2.569 * math.sqrt(4 * 5 / 24), abs=1e-3)


def test_comparisons_markdown_shows_tables_and_notes(report) -> None:
    text = report.comparisons_markdown.read_text()
    assert text.startswith("# Comparisons: test AP, protocol default")
    assert "## glip-t, 10-shot" in text
    assert "Paired differences to **sdpt** (the best four suite AP of the group)" in text
    paired, ranked = text.split("Average ranks")[:2]
    lines = table_lines(paired)
    assert "-3.75" in lines["lora"] and "| 8 " in lines["lora"]
    # Wilcoxon 2/256 (8 pairs, all negative), as for zero-shot; Holm over m = 3: 3 * 2/256 for the first of the two
    assert "0.00781" in lines["vpt"] and "0.0234" in lines["vpt"]
    assert "zero-shot broadcast" in lines["zero-shot"]
    assert "| 1.25 " in table_lines(ranked)["sdpt"]
    assert "Friedman χ² = " in text and "Nemenyi critical difference (α = 0.05) = 2.35" in text
    assert "Demšar 2006" in text and "Holm" in text


def test_markdown_says_why_a_p_is_missing(tmp_path: Path) -> None:
    records = [r for r in RECORDS if r.spec.dataset in ("d1", "d2") and r.spec.train_seed == 0]  # 2 pairs each
    text = write_report(records, tmp_path).comparisons_markdown.read_text()
    assert "too few pairs for a test: 2 non-zero differences" in text
    assert "too few datasets for a test" in text
