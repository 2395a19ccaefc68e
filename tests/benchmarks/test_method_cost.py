"""Training cost per tuning method on GLIP-T and Grounding DINO-T (random weights, one small image,
CPU), as ratios to ``full``.

Each method (default config) is measured by ``method_probe.py`` in its own fresh process: the
seconds of one training step and the peak resident memory that step adds over the built model,
plus two reference rows, ``zero-shot`` as a no-grad forward and ``frozen``, a forward+backward
through the whole frozen network (``method_probe.py`` says why that is the baseline for "SDPT over a
plain frozen forward+backward"). Ratios compare rows of one run; nothing here asserts a speed. The
benchmark's own time is the wall time of all probes (model builds included), per-method numbers are
in ``extra_info``, and ``-s`` prints them as a table.

Two variants:

* ``test_method_cost_subset`` (default, CI): ``full``, ``frozen``, ``sdpt`` and ``lora`` at 128x128
  (Grounding DINO: 256x256, the smallest square that gives its encoder the 900 positions its
  two-stage proposal selection needs), about a minute per model on two cores;
* ``test_method_cost_all_methods``: every registered method plus ``frozen`` at 256x256, about five
  minutes per model on two cores; opt-in::

      BENCH_METHOD_COST=all pytest tests/benchmarks/test_method_cost.py -s

CPU timings are sensitive to other work on the machine: compare rows of one quiet run.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from tabulate import tabulate

import methods  # noqa: F401  (registers every method)
from bench.tuning.base import METHODS

sys.path.insert(0, str(Path(__file__).parent))
from glip_probe import run_probe  # noqa: E402
from method_probe import FROZEN  # noqa: E402

MEASURED_MODELS = ("glip-t", "grounding-dino-t")
PROBE = Path(__file__).parent / "method_probe.py"
SUBSET = ("full", FROZEN, "sdpt", "lora")
SUBSET_SIZE = {"glip-t": 128, "grounding-dino-t": 256}
ALL_SIZE = 256
RUN_ALL = os.environ.get("BENCH_METHOD_COST") == "all"


def measure_methods(model: str, names: tuple[str, ...], size: int) -> dict[str, dict]:
    """One probe per method, one after another (parallel probes would share the cores)."""
    return {name: run_probe(PROBE, model, name, size) for name in names}


def with_ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Per method: seconds, peak added GiB, both as ratios to ``full``, and the trainable count."""
    full = results["full"]
    return {
        name: {
            "mode": r["mode"],
            "seconds": r["seconds"],
            "peak_added_gib": r["peak_added_mib"] / 1024,
            "seconds_ratio_to_full": r["seconds"] / full["seconds"],
            "memory_ratio_to_full": r["peak_added_mib"] / full["peak_added_mib"],
            "trainable": r["trainable"],
        }
        for name, r in results.items()
    }


def sdpt_over_frozen(results: dict[str, dict]) -> dict[str, float]:
    sdpt, frozen = results["sdpt"], results[FROZEN]
    return {"seconds": sdpt["seconds"] / frozen["seconds"], "memory": sdpt["peak_added_mib"] / frozen["peak_added_mib"]}


def table(model: str, rows: dict[str, dict], size: int) -> str:
    body = [
        [name if row["mode"] == "train step" else f"{name} ({row['mode']})", row["seconds"], row["seconds_ratio_to_full"],
         row["peak_added_gib"], row["memory_ratio_to_full"], row["trainable"]]
        for name, row in rows.items()
    ]
    headers = ["method", "s/step", "ratio", "GiB", "ratio", "trainable"]
    return f"{model} cpu {size}x{size}, one step per fresh process\n" + tabulate(
        body, headers, floatfmt=("", ".2f", ".3f", ".3f", ".3f", ""), intfmt=","
    )


def check_and_report(benchmark, model: str, names: tuple[str, ...], size: int) -> dict[str, dict]:
    """Probe ``names``, check every result, store the numbers in ``extra_info`` and print the table."""
    results = benchmark.pedantic(measure_methods, args=(model, names, size), rounds=1, iterations=1)
    for name, r in results.items():
        numbers = (r["seconds"], r["peak_added_mib"], r["loss"])
        assert all(math.isfinite(x) for x in numbers) and r["seconds"] > 0 and r["peak_added_mib"] > 0, (name, r)
        assert r["trainable"] == r["expected_trainable"], (name, r)
    assert results[FROZEN]["reached_inputs"], "the frozen baseline's backward must reach the image and the text embeddings"
    assert results[FROZEN]["peak_added_mib"] < results["full"]["peak_added_mib"]
    rows = with_ratios(results)
    ratio = sdpt_over_frozen(results)
    benchmark.extra_info.update(model=model, image_size=size, methods=rows, sdpt_over_frozen_fwd_bwd=ratio)
    print("\n" + table(model, rows, size))
    print(f"sdpt / frozen fwd+bwd: {ratio['seconds']:.3f} x time, {ratio['memory']:.3f} x memory")
    return results


@pytest.mark.slow
@pytest.mark.benchmark(group="method cost cpu")
@pytest.mark.parametrize("model", MEASURED_MODELS)
def test_method_cost_subset(benchmark, model):
    check_and_report(benchmark, model, SUBSET, SUBSET_SIZE[model])


@pytest.mark.slow
@pytest.mark.benchmark(group="method cost cpu")
@pytest.mark.parametrize("model", MEASURED_MODELS)
@pytest.mark.skipif(not RUN_ALL, reason="all methods take about 5 min per model on 2 cores; set BENCH_METHOD_COST=all to run them")
def test_method_cost_all_methods(benchmark, model):
    results = check_and_report(benchmark, model, (*METHODS.names(), FROZEN), ALL_SIZE)
    assert results["zero-shot"]["peak_added_mib"] < results[FROZEN]["peak_added_mib"], "a no-grad forward keeps no activations"
