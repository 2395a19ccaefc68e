"""Resume after an interruption ends exactly where an uninterrupted run ends.

A BitFit cell (biases everywhere, so dropout and drop-path draw from the random generators) trains
6 steps with a checkpoint after every step and a validation every 3. It is run once without a break,
and once stopped twice by Ctrl-C (before step 2, then before step 5, across a validation) and
resumed: the trained tensors after every step, the selected step, and the validation and test
scores must be identical, not merely close.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import bench.train.loop as loop
from bench.launch.local import run_local
from bench.runs.cell import SELECTED_WEIGHTS, run_cell
from bench.runs.plan import plan_cells
from bench.train.checkpoint import CHECKPOINT, read_checkpoint
from bench.train.optim import LearningRateSchedule
from tests.run_support import quiet_context, synthetic_cache, tiny_request

DATASET = "shapes-colours"
PROTOCOL = {"max_steps": 6, "warmup_steps": 0, "eval_every": 3, "batch_size": 2, "checkpoint_every": 1}


def bitfit_cell(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    context = quiet_context(tmp_path_factory.mktemp("resume"), cache)
    [cell] = plan_cells(tiny_request(["bitfit"], [DATASET], protocol_overrides=PROTOCOL), context)
    return cell, context


@contextmanager
def recording_checkpoints():
    """Yields {step: trained tensors} of every checkpoint written while the block runs."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    original = loop.save_checkpoint

    def save(path, trainable, state):
        seen[state["counters"]["step"]] = {n: p.detach().clone() for n, p in trainable.items()}
        original(path, trainable, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save)
        yield seen


@contextmanager
def ctrl_c_before_step(step: int):
    """Raise KeyboardInterrupt when training is about to run optimiser step ``step`` (0-based)."""
    original = LearningRateSchedule.step

    def step_or_interrupt(self, current):
        if current == step:
            raise KeyboardInterrupt
        original(self, current)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LearningRateSchedule, "step", step_or_interrupt)
        yield


def same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, NaN (undefined, e.g. no large objects) matching NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cell, context = bitfit_cell(tmp_path_factory)
    with recording_checkpoints() as tensors:
        record = run_cell(cell, context)
    best = load_file(context.store.work_root / cell.key / SELECTED_WEIGHTS)
    return SimpleNamespace(cell=cell, context=context, record=record, tensors=tensors, best=best)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, uninterrupted):
    cell, context = bitfit_cell(tmp_path_factory)
    assert cell.key == uninterrupted.cell.key  # another results folder, the same run
    checkpoint = context.store.work_root / cell.key / CHECKPOINT
    steps_at_interrupt = []
    with recording_checkpoints() as tensors:
        for step in (2, 5):
            with ctrl_c_before_step(step), pytest.raises(KeyboardInterrupt):
                run_local([cell], context)  # Ctrl-C is not a cell failure: it stops the sweep
            steps_at_interrupt.append(read_checkpoint(checkpoint)["counters"]["step"])
            assert not context.store.result_path(cell.key).exists()
            assert context.store.failures() == {}
        outcome = run_local([cell], context)
    [record], _ = context.store.load_records()
    best = load_file(context.store.work_root / cell.key / SELECTED_WEIGHTS)
    return SimpleNamespace(outcome=outcome, record=record, tensors=tensors, best=best, steps_at_interrupt=steps_at_interrupt)


def test_each_interruption_leaves_a_checkpoint_at_the_last_finished_step(resumed):
    assert resumed.steps_at_interrupt == [2, 5]
    assert resumed.outcome.finished == [resumed.record.key] and resumed.outcome.failed == {}


def test_every_step_is_trained_once_and_to_the_same_tensors(uninterrupted, resumed):
    assert sorted(uninterrupted.tensors) == sorted(resumed.tensors) == [1, 2, 3, 4, 5, 6]
    for step, tensors in uninterrupted.tensors.items():
        for name, value in tensors.items():
            assert torch.equal(resumed.tensors[step][name], value), (step, name)
    assert any(not torch.equal(uninterrupted.tensors[1][n], uninterrupted.tensors[6][n]) for n in uninterrupted.tensors[1])


def test_the_resumed_record_equals_the_uninterrupted_one(uninterrupted, resumed):
    a, b = uninterrupted.record, resumed.record
    assert b.key == a.key and b.spec == a.spec
    assert b.best_step == a.best_step and a.best_step in (3, 6)
    assert same_scores(b.val, a.val) and same_scores(b.test, a.test)
    assert b.cost.train_steps == a.cost.train_steps == 6
    assert uninterrupted.best.keys() == resumed.best.keys()
    assert all(torch.equal(uninterrupted.best[n], resumed.best[n]) for n in uninterrupted.best)


def test_running_a_finished_cell_again_trains_from_scratch(uninterrupted):
    """What --force does: the stored checkpoint is gone, so the cell trains all 6 steps again."""
    with recording_checkpoints() as tensors:
        record = run_cell(uninterrupted.cell, uninterrupted.context)
    assert sorted(tensors) == [1, 2, 3, 4, 5, 6]
    assert same_scores(record.val, uninterrupted.record.val) and same_scores(record.test, uninterrupted.record.test)
    assert record.best_step == uninterrupted.record.best_step
