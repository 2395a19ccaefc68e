"""The report's entry point: stored run records in, leaderboards and figures under the results folder out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.catalog import Catalog, SuiteSpec
from bench.errors import BenchError
from bench.report.cd_diagram import critical_difference_figure
from bench.report.compare import compare_to_reference
from bench.report.comparison_tables import comparisons_markdown, comparisons_table
from bench.report.figures import save, setting_phrase, write_figures
from bench.report.frame import runs_frame
from bench.report.html import write_html
from bench.report.leaderboard import build_leaderboard, by_shots_table
from bench.report.overlaps import derived_suites, find_overlaps
from bench.report.published import published_comparison, published_markdown
from bench.report.ranks import rank_comparisons
from bench.report.tables import by_shots_markdown, leaderboard_markdown, write_csv, write_markdown
from bench.report.tuning_table import tuning_markdown, tuning_table
from bench.runs.record import RunRecord
from bench.runs.store import RunStore


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and the leaderboard itself (for printing).

    ``figures`` are the leaderboard's figures and ``critical_difference_figures`` the rank diagram of
    the comparisons (PNG and SVG of each); ``html`` is the self-contained page that shows them all.
    """

    leaderboard_csv: Path
    leaderboard_markdown: Path
    by_shots_csv: Path
    by_shots_markdown: Path
    figures: tuple[Path, ...]
    comparisons_csv: Path
    comparisons_markdown: Path
    critical_difference_figures: tuple[Path, ...]
    tuning: tuple[Path, ...]
    published: tuple[Path, ...]
    html: Path
    leaderboard: pd.DataFrame


def write_report(
    records: Sequence[RunRecord],
    out_dir: Path,
    *,
    suites: Sequence[SuiteSpec] = (),
    metric: str = "AP",
    reference: str | None = None,
    trials: Sequence[RunRecord] = (),
    catalog: Catalog | None = None,
) -> ReportFiles:
    """Write ``leaderboard.{csv,md}``, ``leaderboard_by_shots.{csv,md}``, ``comparisons.{csv,md}``,
    ``figures/*.{png,svg}`` and ``index.html`` (all of them on one page) under ``out_dir``.

    ``out_dir`` is the results folder (finished runs live in its ``runs/done/``). ``suites`` are
    aggregated where any of their datasets has results, the first one ranking the rows; when none
    has, one mean over every dataset present takes its place. ``metric`` is a key of the records'
    test metrics. ``reference`` is the method every other one is compared with in each (model,
    shots) group (:mod:`bench.report.compare`); None compares with each group's best row. ``trials``:
    the ``--tune`` trials behind the records (validation only), listed in ``tuning.{csv,md}``.
    ``catalog``: where model entries and dataset claims come from (:mod:`bench.report.overlaps`):
    flagged pairs are marked, each suite with flagged members is also scored without them and a suite
    with domains per domain; zero-shot rows are compared with published scores in ``published.{csv,md}``.
    """
    out_dir = Path(out_dir)
    if not records:
        raise BenchError(
            f"No finished runs were found in {RunStore(out_dir / 'runs').done_dir}, so there is nothing to report. "
            "Run a sweep into this results folder first, e.g. python run_bench.py --methods sdpt,lora --suite odinw13 "
            f"--results {out_dir}, or pass --results the folder your runs were written to."
        )
    frame = runs_frame(records, metric)
    overlaps = find_overlaps(catalog, frame["base_model"].dropna(), frame["dataset"]) if catalog is not None else ()
    if catalog is not None:
        suites = derived_suites(catalog, suites, overlaps)
    board = build_leaderboard(frame, suites, metric, overlaps)
    by_shots = by_shots_table(board)
    paired, ranks = compare_to_reference(frame, board, reference), rank_comparisons(frame)
    comparisons = comparisons_table(board, paired, ranks)
    figures = tuple(write_figures(board, out_dir / "figures"))
    diagram = critical_difference_figure(ranks, setting_phrase(board))
    diagrams = tuple(save(diagram, out_dir / "figures" / "critical_difference"))
    return ReportFiles(
        leaderboard_csv=write_csv(board.table, out_dir / "leaderboard.csv"),
        leaderboard_markdown=write_markdown(leaderboard_markdown(board), out_dir / "leaderboard.md"),
        by_shots_csv=write_csv(by_shots, out_dir / "leaderboard_by_shots.csv"),
        by_shots_markdown=write_markdown(by_shots_markdown(board, by_shots), out_dir / "leaderboard_by_shots.md"),
        figures=figures,
        comparisons_csv=write_csv(comparisons, out_dir / "comparisons.csv"),
        comparisons_markdown=write_markdown(comparisons_markdown(board, paired, ranks), out_dir / "comparisons.md"),
        critical_difference_figures=diagrams,
        tuning=_write_tuning(trials, records, out_dir),
        published=_write_published(frame, catalog, metric, out_dir),
        html=write_html(board, frame, comparisons, [*figures, *diagrams], out_dir),
        leaderboard=board.table,
    )


def _write_published(frame: pd.DataFrame, catalog: Catalog | None, metric: str, out_dir: Path) -> tuple[Path, ...]:
    """``published.{csv,md}`` when zero-shot rows have published scores to compare with, else nothing."""
    table = published_comparison(frame, catalog, metric) if catalog is not None else pd.DataFrame()
    if table.empty:
        return ()
    return write_csv(table, out_dir / "published.csv"), write_markdown(published_markdown(table, metric), out_dir / "published.md")


def _write_tuning(trials: Sequence[RunRecord], records: Sequence[RunRecord], out_dir: Path) -> tuple[Path, ...]:
    """``tuning.{csv,md}`` when the report has tuning trials, else nothing."""
    if not trials:
        return ()
    table = tuning_table(trials, records)
    return write_csv(table, out_dir / "tuning.csv"), write_markdown(tuning_markdown(table), out_dir / "tuning.md")
