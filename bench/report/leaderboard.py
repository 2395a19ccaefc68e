"""From the runs frame to the leaderboard: suite scores per seed replicate, their mean ± CI, costs.

A seed replicate of a row is one ``(split_seed, train_seed)`` pair. Its suite score aggregates that
replicate's own per-dataset scores, so the interval over replicates reflects how much the whole
suite score moves with the seeds. A replicate that lacks a member dataset (a cell not run yet, or an
undefined score) gets no suite score at all: averaging the datasets it has would score a different
suite, and filling in 0 would invent a result. The table reports how many replicates are complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from bench.catalog import SuiteSpec
from bench.eval.aggregate import aggregate_suite
from bench.data.holdout import DECLARED
from bench.report.frame import REPLICATE, ROW, shots_order
from bench.report.overlaps import Overlap
from bench.report.retention import retention_summary
from bench.report.stats import mean_interval

ALL_DATASETS = "all-datasets"
"""The suite a report falls back to when none of the given suites has results: every dataset present."""


@dataclass(frozen=True)
class Leaderboard:
    """The leaderboard table and what its columns are.

    ``table`` has one row per ``(model, method, shots)``, grouped by model and shots (numerically,
    ``full`` last) and, within a group, sorted by the primary (first) suite's mean, best first,
    rows without a score last. Scores are fractions as stored; column names come from
    :func:`dataset_column` and :func:`suite_columns`. ``protocols`` are the training protocols of
    the runs (:func:`bench.report.frame.protocol_label`), sorted.
    """

    table: pd.DataFrame
    metric: str
    suites: tuple[SuiteSpec, ...]
    datasets: tuple[str, ...]
    protocols: tuple[str, ...]
    held_out: tuple[str, ...] = ()  # datasets whose validation was held out of their training images
    overlaps: tuple[Overlap, ...] = ()  # (model, dataset) pairs known to overlap the model's pre-training data

    def overlapping(self, model: str, dataset: str) -> bool:
        """Whether the row of pre-trained ``model`` (a registered name) is flagged on ``dataset``."""
        return any(o.model == model and o.dataset == dataset for o in self.overlaps)

    @property
    def has_retention(self) -> bool:
        """Whether any row was scored on its model's retention set (the protocol's ``retention``)."""
        return bool(self.table["retention"].notna().any())

    @property
    def primary(self) -> SuiteSpec:
        return self.suites[0]

    @property
    def protocol_phrase(self) -> str:
        """``protocol shapes (max_steps=50)``, or ``protocols a; b`` when the runs used several."""
        return f"protocol{'' if len(self.protocols) == 1 else 's'} {'; '.join(self.protocols)}"


@dataclass(frozen=True)
class SuiteColumns:
    """The names of a suite's four leaderboard columns."""

    mean: str
    ci95: str
    n: str
    replicates: str


def dataset_column(dataset: str, metric: str) -> str:
    return f"{dataset} {metric}"


def suite_columns(suite: str, metric: str) -> SuiteColumns:
    """``n`` counts the complete replicates (those with a suite score), ``replicates`` all of them."""
    prefix = f"{suite} suite"
    return SuiteColumns(f"{prefix} {metric}", f"{prefix} {metric} ci95", f"{prefix} n", f"{prefix} replicates")


def build_leaderboard(frame: pd.DataFrame, suites: Sequence[SuiteSpec], metric: str,
                      overlaps: Sequence[Overlap] = ()) -> Leaderboard:
    """The leaderboard of the runs in ``frame`` (see :func:`bench.report.frame.runs_frame`); ``overlaps``
    are the flagged (model, dataset) pairs among them (:mod:`bench.report.overlaps`)."""
    chosen = report_suites(frame, suites)
    datasets = dataset_order(frame, chosen)
    parts = [_named_summary(frame, suite, metric) for suite in chosen]
    parts.append(cost_summary(frame))
    parts.append(retention_summary(frame).reindex(_rows(frame)))
    parts.append(hyperparameter_summary(frame))
    parts.append(dataset_means(frame, datasets).rename(columns=lambda name: dataset_column(name, metric)))
    table = pd.concat(parts, axis=1).reset_index()
    table = _sorted(table, suite_columns(chosen[0].name, metric).mean)
    held_out = tuple(sorted(set(frame.loc[frame["validation"] != DECLARED, "dataset"])))
    return Leaderboard(table, metric, tuple(chosen), tuple(datasets), tuple(sorted(set(frame["protocol"]))), held_out,
                       tuple(overlaps))


def report_suites(frame: pd.DataFrame, suites: Sequence[SuiteSpec]) -> list[SuiteSpec]:
    """The given suites that have results on at least one member, or else one over all datasets present."""
    present = set(frame["dataset"])
    chosen = [suite for suite in suites if present.intersection(suite.datasets)]
    if chosen:
        return chosen
    return [SuiteSpec(ALL_DATASETS, tuple(sorted(present)), description="mean over every dataset in the results")]


def dataset_order(frame: pd.DataFrame, suites: Sequence[SuiteSpec]) -> list[str]:
    """Datasets with results: the suites' members in suite order, then the others alphabetically."""
    present = set(frame["dataset"])
    ordered = list(dict.fromkeys(name for suite in suites for name in suite.datasets if name in present))
    return ordered + sorted(present.difference(ordered))


def dataset_means(frame: pd.DataFrame, datasets: Sequence[str]) -> pd.DataFrame:
    """Per row and dataset, the mean score over the seeds that have one (NaN where none has)."""
    means = frame.groupby([*ROW, "dataset"])["score"].mean().unstack("dataset")
    return means.reindex(index=_rows(frame), columns=list(datasets))


def replicate_scores(frame: pd.DataFrame, suite: SuiteSpec) -> pd.DataFrame:
    """One row per seed replicate with a run on any suite member; ``score`` NaN unless it has them all."""
    members = frame[frame["dataset"].isin(suite.datasets)]
    rows = []
    for identity, runs in members.groupby([*ROW, *REPLICATE], dropna=False, sort=False):
        scores = {dataset: score for dataset, score in zip(runs["dataset"], runs["score"]) if not math.isnan(score)}
        complete = set(suite.datasets) <= set(scores)
        score = aggregate_suite(scores, suite.aggregation, members=suite.datasets) if complete else math.nan
        rows.append(dict(zip([*ROW, *REPLICATE], identity)) | {"score": score})
    return pd.DataFrame(rows, columns=[*ROW, *REPLICATE, "score"])


def suite_summary(frame: pd.DataFrame, suite: SuiteSpec) -> pd.DataFrame:
    """Per row: mean, ci95 (t-interval half-width, NaN below two replicates), n complete, replicates."""
    summaries = []
    for identity, replicates in replicate_scores(frame, suite).groupby(ROW, sort=False):
        interval = mean_interval(replicates["score"].dropna())
        summaries.append(dict(zip(ROW, identity)) | {
            "mean": interval.mean, "ci95": interval.half_width, "n": interval.n, "replicates": len(replicates),
        })
    summary = pd.DataFrame(summaries, columns=[*ROW, "mean", "ci95", "n", "replicates"]).set_index(ROW)
    summary = summary.reindex(_rows(frame))
    return summary.fillna({"n": 0, "replicates": 0}).astype({"n": int, "replicates": int})


def cost_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: trainable and effective parameters, percent, stored size and throughput averaged over its
    runs (they differ only where a method's size depends on the dataset), ``wall_s`` the mean wall time
    of one of its cells (what a user pays per dataset and seed), and the largest peak memory,
    which is what a user must provision; ``peak_memory_kind`` lists the meters involved and
    ``protocol`` the protocols of the row's runs. ``base_model`` is the registered name of the row's
    pre-trained model (empty for a randomly initialised one), what overlap flags are keyed by."""
    costs = frame.groupby(ROW).agg(
        base_model=("base_model", "first"),
        trainable_params=("trainable_params", "mean"),
        trainable_percent=("trainable_percent", "mean"),
        effective_params=("effective_params", "mean"),
        stored_mb=("stored_mb", "mean"),
        peak_memory_gib=("peak_memory_gib", "max"),
        peak_memory_kind=("peak_memory_kind", lambda kinds: "+".join(sorted(set(kinds)))),
        train_images_per_s=("train_images_per_s", "mean"),
        wall_s=("wall_s", "mean"),
        protocol=("protocol", lambda labels: "; ".join(sorted(set(labels)))),
    )
    return costs.reindex(_rows(frame))


def hyperparameter_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: how its hyper-parameters were obtained (``tuning``) and the settings selected, each with
    the number of datasets it was selected on (``hyperparameters``), e.g. ``lr=0.01 (4), lr=0.1 (2)``;
    ``defaults`` where nothing was tuned."""
    rows = {}
    for identity, runs in frame.groupby(ROW, sort=False):
        per_dataset = runs.drop_duplicates(["dataset", "setting"])
        settings = per_dataset["setting"].replace("", "defaults").value_counts(sort=False)
        rows[identity] = {
            "tuning": "; ".join(sorted(set(runs["tuning"]))),
            "hyperparameters": ", ".join(f"{setting} ({n})" for setting, n in sorted(settings.items())),
        }
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=["tuning", "hyperparameters"])
    summary.index = pd.MultiIndex.from_tuples(summary.index, names=ROW)
    return summary.reindex(_rows(frame))


def by_shots_table(board: Leaderboard) -> pd.DataFrame:
    """The primary suite's mean, ci95 and n per ``(model, method)`` and shots (columns ``"<shots> mean"`` ...),
    shots in numeric order with ``full`` last; NaN where a method has no row at those shots."""
    columns = suite_columns(board.primary.name, board.metric)
    stats = {"mean": columns.mean, "ci95": columns.ci95, "n": columns.n}
    rows = board.table.set_index(["model", "method"])
    table = pd.DataFrame(index=rows.index.unique())
    for label in sorted(rows["shots"].unique(), key=shots_order):
        at_shots = rows[rows["shots"] == label]
        for stat, column in stats.items():
            table[f"{label} {stat}"] = at_shots[column]
        table[f"{label} n"] = table[f"{label} n"].astype("Int64")  # a count, left empty where there is no row
    return table.reset_index()


def _named_summary(frame: pd.DataFrame, suite: SuiteSpec, metric: str) -> pd.DataFrame:
    columns = suite_columns(suite.name, metric)
    return suite_summary(frame, suite).rename(
        columns={"mean": columns.mean, "ci95": columns.ci95, "n": columns.n, "replicates": columns.replicates}
    )


def _rows(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(frame[ROW].drop_duplicates())


def _sorted(table: pd.DataFrame, score_column: str) -> pd.DataFrame:
    def key(i: int) -> tuple:
        row = table.iloc[i]
        score = row[score_column]
        missing = bool(pd.isna(score))
        return (row["model"], shots_order(row["shots"]), missing, 0.0 if missing else -score, row["method"])

    return table.iloc[sorted(range(len(table)), key=key)].reset_index(drop=True)
