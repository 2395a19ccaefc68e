"""Helpers for the runner tests: a shared synthetic-data cache and tiny sweeps of ``glip-nano``.

Tests import these functions (no fixtures live here). The cache folder sits below pytest's session
base temp folder, so every test file of one session reuses the datasets the first one generated
(generation is a no-op when a dataset is already there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pytest

from bench.catalog import Catalog, materialize_synthetic
from bench.runs.plan import RunContext, SweepRequest
from bench.runs.record import RESULTS_VERSION, Cost, RunRecord, RunSpec

MODEL = "glip-nano"
TINY_PROTOCOL = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "batch_size": 2, "checkpoint_every": 1}
"""A few seconds per cell on two CPU cores: two steps of batch 2, one validation, one test pass."""


def synthetic_cache(tmp_path_factory: pytest.TempPathFactory, datasets: Sequence[str] = ()) -> Path:
    """The session's synthetic-data folder, with ``datasets`` generated in it."""
    root = tmp_path_factory.getbasetemp() / "synthetic-cache"
    catalog = Catalog.load()
    for name in datasets:
        materialize_synthetic(catalog.dataset(name), root)
    return root


def tiny_request(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int] = (0,),
    protocol_overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> SweepRequest:
    """A sweep of ``glip-nano`` (its packaged pre-trained weights) under the ``shapes`` protocol cut to a few steps."""
    return SweepRequest(
        model=MODEL,
        methods=list(methods),
        datasets=list(datasets),
        seeds=list(seeds),
        protocol="shapes",
        protocol_overrides=dict(TINY_PROTOCOL if protocol_overrides is None else protocol_overrides),
        **fields,
    )


def quiet_context(results: Path, cache_dir: Path, **fields: Any) -> RunContext:
    """A CPU run context without progress bars."""
    return RunContext(results=results, cache_dir=cache_dir, device="cpu", progress=False, **fields)


def stored_record(spec: RunSpec, key: str, ap: float = 0.25) -> RunRecord:
    """A plausible finished record of ``spec`` under ``key`` (for store and planning tests; nothing ran)."""
    scores = {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": ap, "APm": ap, "APl": math.nan}
    return RunRecord(
        key=key,
        spec=spec,
        val=scores,
        test={name: value * 0.9 for name, value in scores.items()},
        best_step=100,
        cost=Cost(trainable_params=1_000, effective_params=1_000, base_params=2_010_100, stored_bytes=4_000,
                  peak_memory_bytes=1 << 30, peak_memory_kind="rss", train_images_per_s=10.0,
                  eval_images_per_s=20.0, train_steps=150, wall_s=60.0),
        provenance={"results_version": RESULTS_VERSION, "git_commit": "0" * 40, "device": "cpu (test)"},
    )


def plan_lines(out: str) -> list[str]:
    """The cell lines of a ``--dry-run`` and its count line (the per-method summary and estimate follow)."""
    lines = out.splitlines()
    return lines[: next(i for i, line in enumerate(lines) if " cells: " in line) + 1]
