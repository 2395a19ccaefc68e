"""Reports built only from stored run records: leaderboard tables (CSV, markdown) and figures.

:func:`write_report` is the entry point; the modules below it each do one step: ``frame`` (records
to a tidy table), ``stats`` (mean with t-interval, Pareto front), ``leaderboard`` (suite scores per
seed replicate and the tables), ``tables`` (CSV and markdown), ``figures`` (matplotlib).
"""

from bench.report.frame import runs_frame
from bench.report.leaderboard import Leaderboard, build_leaderboard, by_shots_table
from bench.report.stats import MeanInterval, mean_interval, pareto_front
from bench.report.write import ReportFiles, write_report

__all__ = [
    "Leaderboard",
    "MeanInterval",
    "ReportFiles",
    "build_leaderboard",
    "by_shots_table",
    "mean_interval",
    "pareto_front",
    "runs_frame",
    "write_report",
]
