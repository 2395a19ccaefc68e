"""Retention in the leaderboard: each row's score on its model's retention set, and what tuning cost.

A record made with the protocol's ``retention`` on holds the selected weights' metrics on each
dataset of the model's retention set (:mod:`bench.runs.retention`). A row's ``retention`` is their
mean over its runs; its ``retention_drop`` is the zero-shot row's retention (same model and
retention set: the untouched base) minus its own, in the same units, so a method that made the model
forget shows a positive drop. Without a zero-shot row of that model the drop stays missing.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.report.frame import ROW

ZERO_SHOT = "zero-shot"


def retention_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: ``retention`` (mean over its runs) and ``retention_drop`` (its model's zero-shot retention
    minus it)."""
    summary = frame.groupby(ROW, sort=False)["retention"].mean().to_frame()
    base = summary.reset_index()
    zero_shot = base[base["method"] == ZERO_SHOT].groupby("model")["retention"].mean()
    summary["retention_drop"] = [zero_shot.get(model, math.nan) - value
                                 for (model, _, _), value in summary["retention"].items()]
    return summary
