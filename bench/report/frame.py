"""Stored run records as one tidy table: a row per finished run, the columns a report groups by.

Everything a report shows is computed from this frame, so the leaderboard, the per-shots table and
the figures can never disagree about which runs they counted. A run's identity in a report is
``(model, method, shots, dataset, split_seed, train_seed)``; ``method`` is the spec's method label
(the method and its non-default options), ``shots`` its shots label (``"1"`` ... ``"full"``).
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from bench.errors import BenchError
from bench.runs.record import FULL_DATA, RunRecord

ROW = ["model", "method", "shots"]
"""One leaderboard row."""
REPLICATE = ["split_seed", "train_seed"]
"""One seed replicate of a row: the few-shot split and the training seed."""
RUN = [*ROW, "dataset", *REPLICATE]
GIB = float(1 << 30)
MAX_LISTED = 5


def runs_frame(records: Sequence[RunRecord], metric: str = "AP") -> pd.DataFrame:
    """One row per record: its identity, ``score`` (``metric`` on the test split, a fraction) and its cost.

    Refuses a metric that some record lacks (naming the metrics the records do have) and two
    records of the same run (e.g. finished under two protocols or two versions of the code), which
    would otherwise be counted as two seeds.
    """
    _require_metric(records, metric)
    frame = pd.DataFrame([_row(record, metric) for record in records])
    frame["split_seed"] = frame["split_seed"].astype("Int64")  # None (unused with full data) stays missing
    _refuse_duplicates(frame)
    return frame


def shots_order(label: str) -> tuple[bool, int]:
    """Sort key of a shots label: numerically, with ``full`` last."""
    return (True, 0) if label == FULL_DATA else (False, int(label))


def _row(record: RunRecord, metric: str) -> dict[str, object]:
    spec, cost = record.spec, record.cost
    return {
        "model": spec.model,
        "method": spec.method_label,
        "shots": spec.shots_label,
        "dataset": spec.dataset,
        "split_seed": spec.split_seed,
        "train_seed": spec.train_seed,
        "score": float(record.test[metric]),
        "trainable_params": cost.trainable_params,
        "trainable_percent": cost.trainable_percent,
        # the meter stores 0 where the platform has no measure: unknown, not free
        "peak_memory_gib": cost.peak_memory_bytes / GIB if cost.peak_memory_bytes else math.nan,
        "peak_memory_kind": cost.peak_memory_kind,
        "train_images_per_s": cost.train_images_per_s,
        "key": record.key,
    }


def _require_metric(records: Sequence[RunRecord], metric: str) -> None:
    lacking = [record for record in records if metric not in record.test]
    if not lacking:
        return
    available = sorted({name for record in records for name in record.test})
    examples = ", ".join(record.key for record in lacking[:MAX_LISTED])
    raise BenchError(
        f"{len(lacking)} of {len(records)} finished runs have no test metric {metric!r} (e.g. {examples}); "
        f"the records hold {', '.join(available) or 'no metrics'}. Choose one of those metrics for the report."
    )


def _refuse_duplicates(frame: pd.DataFrame) -> None:
    for identity, keys in frame.groupby(RUN, dropna=False, sort=False)["key"]:
        if len(keys) > 1:
            model, method, shots, dataset, split_seed, train_seed = identity
            split = "none" if pd.isna(split_seed) else split_seed
            raise BenchError(
                f"{len(keys)} finished runs share model {model}, method {method}, shots {shots}, dataset {dataset}, "
                f"split seed {split} and train seed {train_seed} (run keys {', '.join(keys)}): they differ in what "
                f"is not a leaderboard column (protocol, weights, code version), so they are not seed replicates of "
                f"one row. Report them from separate --results folders, or delete the stale files from runs/done/."
            )
