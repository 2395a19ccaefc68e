"""Stored run records as one tidy table: a row per finished run, the columns a report groups by.

Everything a report shows is computed from this frame, so the leaderboard, the per-shots table and
the figures can never disagree about which runs they counted. A run's identity in a report is
``(model, method, shots, dataset, split_seed, train_seed)``; ``method`` is the spec's method label
(the method and its non-default options), ``shots`` its shots label (``"1"`` ... ``"full"``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.errors import BenchError
from bench.runs.record import FULL_DATA, SELECTED, RunRecord, RunSpec

ROW = ["model", "method", "shots"]
"""One leaderboard row."""
REPLICATE = ["split_seed", "train_seed"]
"""One seed replicate of a row: the few-shot split and the training seed."""
RUN = [*ROW, "dataset", *REPLICATE]
GIB = float(1 << 30)
MB = 1e6  # stored sizes in decimal megabytes, as in the README's accounting table
MAX_LISTED = 5


def runs_frame(records: Sequence[RunRecord], metric: str = "AP") -> pd.DataFrame:
    """One row per record: its identity, ``score`` (``metric`` on the test split, a fraction), its cost
    and its training protocol (:func:`protocol_label`).

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


def protocol_label(spec: RunSpec) -> str:
    """The protocol's name with its overrides, e.g. ``shapes (max_steps=50)``: runs are only comparable
    under one protocol, so every table and figure says which one produced it."""
    if not spec.protocol_overrides:
        return spec.protocol
    changes = ", ".join(f"{name}={_override(value)}" for name, value in sorted(spec.protocol_overrides.items()))
    return f"{spec.protocol} ({changes})"


def tuning_label(spec: RunSpec) -> str:
    """How a run's hyper-parameters were obtained: ``defaults`` (the method's sourced defaults and the
    user's options), or e.g. ``lr tuned on val, 3 trials per dataset``."""
    tuning = spec.tuning
    if tuning.get("stage") != SELECTED:
        return "defaults"
    return f"{','.join(tuning.get('fields', []))} tuned on val, {tuning.get('trials')} trials per {tuning.get('scope')}"


def setting_label(spec: RunSpec) -> str:
    """The values tuning selected for a run, e.g. ``lr=0.01`` (empty for defaults)."""
    return ", ".join(f"{name}={value:.3g}" for name, value in sorted(spec.tuned_values.items()))


def _override(value: Any) -> str:
    """As typed on the command line (``--protocol-set`` takes JSON values): ``50``, ``true``, ``cosine``."""
    return value if isinstance(value, str) else json.dumps(value)


def _row(record: RunRecord, metric: str) -> dict[str, object]:
    spec, cost = record.spec, record.cost
    return {
        "model": spec.model_label,
        "base_model": spec.model if spec.weights is not None else None,  # pre-trained: what the catalog knows of
        "method": spec.method_label,
        "shots": spec.shots_label,
        "dataset": spec.dataset,
        "split_seed": spec.split_seed,
        "train_seed": spec.train_seed,
        "score": float(record.test[metric]),
        "retention": retention_score(record.retention, metric),
        "val_score": float(record.val.get(metric, math.nan)),  # zero-shot rows: compared with published val scores
        "weights_name": Path(spec.weights).name if spec.weights is not None else None,
        "trainable_params": cost.trainable_params,
        "trainable_percent": cost.trainable_percent,
        "effective_params": cost.effective_params,
        "stored_mb": cost.stored_bytes / MB,
        # the meter stores 0 where the platform has no measure: unknown, not free
        "peak_memory_gib": cost.peak_memory_bytes / GIB if cost.peak_memory_bytes else math.nan,
        "peak_memory_kind": cost.peak_memory_kind,
        "train_images_per_s": cost.train_images_per_s,
        "train_steps": cost.train_steps,
        "wall_s": cost.wall_s,
        "protocol": protocol_label(spec),
        "tuning": tuning_label(spec),
        "setting": setting_label(spec),
        "validation": spec.validation,
        "key": record.key,
    }


def retention_score(retention: dict[str, dict[str, float]], metric: str) -> float:
    """The mean ``metric`` over a record's retention datasets; NaN without any."""
    values = [scores[metric] for scores in retention.values() if metric in scores]
    return sum(values) / len(values) if values else math.nan


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
