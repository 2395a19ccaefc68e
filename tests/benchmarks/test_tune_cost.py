"""The extra cost of ``--tune`` over an untuned sweep of the same cells (glip-nano, CPU).

The same sweep (2 methods x 1 dataset x R seeds, a few steps per cell) runs twice into fresh results
folders: once with each method's defaults, once with ``--tune lr --tune-trials T``. Tuning trains T
trials per method on the first replicate, scores the winner's stored weights on test for that
replicate, and trains the other R - 1 replicates with the selected lr, so the expected ratio of
trained cells is ``(T + R - 1) / R``; the measured wall-time ratio also carries the test scoring and
model builds. Nothing is asserted about speed; ``-s`` prints the numbers, ``extra_info`` keeps them::

    pytest tests/benchmarks/test_tune_cost.py -s
"""

from __future__ import annotations

import json
import time

import pytest

from bench.cli import main
from bench.runs.store import RunStore
from tests.run_support import TINY_PROTOCOL, synthetic_cache

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

DATASET = "shapes-colours"
METHODS = "sdpt,lora"
SEEDS, TRIALS = 3, 3
PROTOCOL = TINY_PROTOCOL | {"max_steps": 4, "eval_every": 4}


def _sweep(results, cache, *extra: str) -> float:
    args = ["--methods", METHODS, "--datasets", DATASET, "--protocol", "shapes", "--seeds", ",".join(map(str, range(SEEDS))),
            "--results", str(results), "--cache-dir", str(cache), "--no-progress",
            *[a for k, v in PROTOCOL.items() for a in ("--protocol-set", f"{k}={json.dumps(v)}")], *extra]
    start = time.perf_counter()
    assert main(args) == 0
    return time.perf_counter() - start


def test_tune_cost_relative_to_an_untuned_sweep(benchmark, tmp_path_factory, capsys):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    untuned_s = _sweep(tmp_path_factory.mktemp("untuned"), cache)
    tuned_results = tmp_path_factory.mktemp("tuned")
    tuned_s = benchmark.pedantic(_sweep, args=(tuned_results, cache, "--tune", "lr", "--tune-trials", str(TRIALS)),
                                 rounds=1, iterations=1)
    records, _ = RunStore(tuned_results / "runs").load_records()
    trained = sum(1 for r in records if r.spec.is_trial or r.spec.train_seed != 0)
    methods = len(METHODS.split(","))
    assert trained == methods * (TRIALS + SEEDS - 1)
    info = {"untuned_s": round(untuned_s, 2), "tuned_s": round(tuned_s, 2), "wall_ratio": round(tuned_s / untuned_s, 3),
            "trained_cells_untuned": methods * SEEDS, "trained_cells_tuned": trained,
            "expected_trained_ratio": round((TRIALS + SEEDS - 1) / SEEDS, 3)}
    benchmark.extra_info.update(info)
    with capsys.disabled():
        print(f"\n--tune lr --tune-trials {TRIALS} over {SEEDS} seeds: {tuned_s:.1f} s against {untuned_s:.1f} s untuned "
              f"({tuned_s / untuned_s:.2f}x; trained cells {trained} against {methods * SEEDS}, "
              f"{info['expected_trained_ratio']:.2f}x expected)")
