"""Reports built only from stored run records: leaderboard tables (CSV, markdown), comparisons and figures.

:func:`write_report` is the entry point; the modules below it each do one step: ``frame`` (records
to a tidy table), ``stats`` (mean with t-interval, Pareto front), ``leaderboard`` (suite scores per
seed replicate and the tables), ``tables`` (CSV and markdown), ``figures`` (matplotlib), ``compare``
(paired differences to a reference method), ``ranks`` (average ranks, Friedman, Nemenyi; Demšar
2006), ``comparison_tables`` (their CSV and markdown) and ``cd_diagram`` (the critical-difference figure).
"""

from bench.report.compare import GroupComparison, compare_to_reference, holm
from bench.report.frame import runs_frame
from bench.report.leaderboard import Leaderboard, build_leaderboard, by_shots_table
from bench.report.ranks import RankComparison, critical_difference, rank_comparisons
from bench.report.stats import MeanInterval, mean_interval, pareto_front
from bench.report.write import ReportFiles, write_report

__all__ = [
    "GroupComparison",
    "Leaderboard",
    "MeanInterval",
    "RankComparison",
    "ReportFiles",
    "build_leaderboard",
    "by_shots_table",
    "compare_to_reference",
    "critical_difference",
    "holm",
    "mean_interval",
    "pareto_front",
    "rank_comparisons",
    "runs_frame",
    "write_report",
]
