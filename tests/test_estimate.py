"""--dry-run's cost estimate: cells priced from finished cells of the same task, else of the same method."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.errors import BenchError
from bench.runs.estimate import StepProfile, estimate_sweep, plan_summary
from bench.runs.plan import Cell
from bench.runs.record import RunSpec
from tests.run_support import stored_record

SPEC = RunSpec(model="glip-nano", method="sdpt", dataset="a", shots=None, train_seed=0)


def cell(**changes) -> Cell:
    spec = dataclasses.replace(SPEC, **changes)
    return Cell(spec, f"{spec.method}-{spec.dataset}-{spec.train_seed}")


def finished(wall_s: float, **changes):
    record = stored_record(dataclasses.replace(SPEC, **changes), "k")
    return dataclasses.replace(record, cost=dataclasses.replace(record.cost, wall_s=wall_s))


def test_a_cell_is_priced_at_the_median_of_its_task_then_of_its_method():
    records = [finished(100.0), finished(300.0, train_seed=1), finished(200.0, train_seed=2), finished(7200.0, dataset="b")]
    estimate = estimate_sweep([cell(train_seed=3), cell(dataset="c", train_seed=0), cell(method="lora")], records)
    assert estimate.exact_s == 200.0  # median of a's three seeds, not b's long run
    assert estimate.rough_s == 250.0  # c has none: the median of the method over every dataset (100, 200, 300, 7200)
    assert [c.spec.method for c in estimate.unknown] == ["lora"]
    assert estimate.sources == 4
    text = estimate.describe(3)
    assert "0.1 h for 2 cell(s) from the wall times of 4 finished cell(s) on cpu (test) (4)" in text
    assert "1 cell(s) have no estimate" in text


def test_with_nothing_finished_the_estimate_says_how_to_get_one():
    text = estimate_sweep([cell()], []).describe(1)
    assert text.startswith("No estimate of the 1 cell(s)") and "--seeds 0" in text and "python -m bench.profile" in text


def test_a_step_time_profile_prices_what_no_finished_cell_prices(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps([
        {"model": "glip-nano", "method": "lora", "seconds": 2.0, "batch": 4, "device_name": "NVIDIA H100", "height": 800,
         "width": 1333, "amp": "bf16"},
        {"model": "glip-nano", "method": "vpt", "error": "out of memory", "batch": 4},
    ]))
    profile = StepProfile.load(path)
    estimate = estimate_sweep([cell(method="lora"), cell(method="vpt"), cell()], [finished(100.0)], profile,
                              training_images=lambda c: 3600)
    assert estimate.exact_s == 100.0 and estimate.profiled_s == 3600 * 0.5 and estimate.profiled_cells == 1
    assert [c.spec.method for c in estimate.unknown] == ["vpt"]  # its profile row failed
    assert "at most 0.5 h of training for 1 cell(s) from the step-time profile (NVIDIA H100, 800x1333, amp bf16" in estimate.describe(3)
    path.write_text("[{}]")
    with pytest.raises(BenchError, match="is not a profile written by `python -m bench.profile --out FILE`"):
        StepProfile.load(path)


def test_the_summary_counts_done_and_planned_cells_per_method_and_dataset():
    cells = [cell(), cell(train_seed=1), cell(dataset="b"), cell(method="lora")]
    lines = plan_summary(cells, todo=cells[1:])
    assert lines[0].split() == ["sdpt", "1", "done,", "2", "to", "run", "(a", "1/2,", "b", "0/1)"]
    assert lines[1].split()[:5] == ["lora", "0", "done,", "1", "to"]
