"""Planning overhead of ``--dry-run``: 2,000 cells, 1,000 of them with a stored result.

5 methods x the 8 synthetic datasets (the 6 of shapes-odinw, shapes and shapes-lvis) x 5 shot
settings x 10 seeds = 2,000 cells; every other cell has a real RunRecord JSON in ``done/``. The timed
call is what ``--dry-run`` does before printing: :func:`plan_cells` (name checks, cached
fingerprints, 2,000 keys) and :func:`missing_cells` (one listing of ``done/`` and a read of each
of the plan's result files). Data generation and the first hashing of the annotation files happen
before timing. No timing is asserted; ``-s`` prints the seconds, ``extra_info`` keeps them::

    pytest tests/benchmarks/test_plan_speed.py -s
"""

from __future__ import annotations

import time

import pytest

from bench.catalog import Catalog
from bench.runs.plan import SweepRequest, missing_cells, plan_cells
from tests.run_support import quiet_context, stored_record, synthetic_cache

pytestmark = pytest.mark.benchmark

METHODS = ("full", "bitfit", "sdpt", "lora", "coop")  # methods that train: one cell per seed each
SHOTS = (1, 3, 5, 10, None)
SEEDS = tuple(range(10))
CELLS, DONE = 2000, 1000


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The request, a results folder holding every other cell's record, and the generated data."""
    catalog = Catalog.load()
    datasets = [*catalog.suite("shapes-odinw").datasets, "shapes", "shapes-lvis"]
    cache = synthetic_cache(tmp_path_factory, datasets)
    context = quiet_context(tmp_path_factory.mktemp("plan-speed"), cache)
    request = SweepRequest(model="glip-nano", methods=METHODS, datasets=datasets, shots=SHOTS, seeds=SEEDS,
                           protocol="shapes", protocol_overrides={"max_steps": 500})
    cells = plan_cells(request, context, catalog)  # also fills the fingerprint cache
    store = context.store
    store.done_dir.mkdir(parents=True)
    for cell in cells[::2]:
        store.result_path(cell.key).write_text(stored_record(cell.spec, cell.key).to_json())
    return request, context, catalog


def test_dry_run_planning_of_2000_cells_with_1000_results(benchmark, planned):
    request, context, catalog = planned

    def plan_and_find_missing():
        cells = plan_cells(request, context, catalog)
        return cells, missing_cells(cells, context.store)

    cells, todo = benchmark.pedantic(plan_and_find_missing, rounds=3, iterations=1, warmup_rounds=1)
    assert len(cells) == CELLS and len(todo) == CELLS - DONE
    assert len(context.store.finished_keys()) == DONE

    start = time.perf_counter()
    cells = plan_cells(request, context, catalog)
    planned_s = time.perf_counter() - start
    start = time.perf_counter()
    missing_cells(cells, context.store)
    missing_s = time.perf_counter() - start
    timing = {"cells": CELLS, "done": DONE, "plan_cells_s": round(planned_s, 4), "missing_cells_s": round(missing_s, 4),
              "total_min_s": round(benchmark.stats.stats.min, 4)}
    benchmark.extra_info.update(timing)
    print(f"\nplanning {CELLS} cells with {DONE} results: plan_cells {planned_s:.3f} s, missing_cells {missing_s:.3f} s, "
          f"together (best of 3) {benchmark.stats.stats.min:.3f} s")
