"""The report's entry point: stored run records in, leaderboards and figures under the results folder out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.catalog import SuiteSpec
from bench.errors import BenchError
from bench.report.figures import write_figures
from bench.report.frame import runs_frame
from bench.report.leaderboard import build_leaderboard, by_shots_table
from bench.report.tables import by_shots_markdown, leaderboard_markdown, write_csv, write_markdown
from bench.runs.record import RunRecord
from bench.runs.store import RunStore


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and the leaderboard itself (for printing)."""

    leaderboard_csv: Path
    leaderboard_markdown: Path
    by_shots_csv: Path
    by_shots_markdown: Path
    figures: tuple[Path, ...]
    leaderboard: pd.DataFrame


def write_report(
    records: Sequence[RunRecord], out_dir: Path, *, suites: Sequence[SuiteSpec] = (), metric: str = "AP"
) -> ReportFiles:
    """Write ``leaderboard.{csv,md}``, ``leaderboard_by_shots.{csv,md}`` and ``figures/*.{png,svg}`` under ``out_dir``.

    ``out_dir`` is the results folder (finished runs live in its ``runs/done/``). ``suites`` are
    aggregated where any of their datasets has results, the first one ranking the rows; when none
    has, one mean over every dataset present takes its place. ``metric`` is a key of the records'
    test metrics.
    """
    out_dir = Path(out_dir)
    if not records:
        raise BenchError(
            f"No finished runs were found in {RunStore(out_dir / 'runs').done_dir}, so there is nothing to report. "
            "Run a sweep into this results folder first, e.g. python run_bench.py --methods sdpt,lora --suite odinw13 "
            f"--results {out_dir}, or pass --results the folder your runs were written to."
        )
    board = build_leaderboard(runs_frame(records, metric), suites, metric)
    by_shots = by_shots_table(board)
    return ReportFiles(
        leaderboard_csv=write_csv(board.table, out_dir / "leaderboard.csv"),
        leaderboard_markdown=write_markdown(leaderboard_markdown(board), out_dir / "leaderboard.md"),
        by_shots_csv=write_csv(by_shots, out_dir / "leaderboard_by_shots.csv"),
        by_shots_markdown=write_markdown(by_shots_markdown(board, by_shots), out_dir / "leaderboard_by_shots.md"),
        figures=tuple(write_figures(board, out_dir / "figures")),
        leaderboard=board.table,
    )
