"""A process that runs cell after cell builds its base detector once, and a cell computes the same in a
fresh and in a reused process.

An SDPT cell is run first in a fresh process state; then a LoRA cell (peft modules injected into the
detector's layers) and a BitFit cell (the detector's own biases trained) run in the same process
before the SDPT cell runs again. Its scores, selected step and tuned weights must be identical, and
the base must have been built only once for the three cells.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import bench.runs.warm as warm
from bench.runs.cell import SELECTED_WEIGHTS, run_cell
from bench.runs.plan import plan_cells
from tests.run_support import quiet_context, synthetic_cache, tiny_request

DATASET = "shapes-colours"


def cell_of(method: str, context):
    [cell] = plan_cells(tiny_request([method], [DATASET]), context)
    return cell


def outcome(cell, context) -> tuple:
    record = run_cell(cell, context)
    weights = load_file(context.store.work_dir(cell.key) / SELECTED_WEIGHTS)
    return record.val, record.test, record.best_step, weights


def test_a_reused_process_builds_once_and_computes_what_a_fresh_one_does(tmp_path, tmp_path_factory, monkeypatch):
    data = synthetic_cache(tmp_path_factory, [DATASET])
    context = quiet_context(tmp_path, data, frozen_cache="off")
    builds = []
    original = warm.build_model
    monkeypatch.setattr(warm, "build_model", lambda *args: builds.append(args) or original(*args))

    warm.forget_base_models()
    fresh = outcome(cell_of("sdpt", context), context)
    assert len(builds) == 1

    builds.clear()
    for method in ("lora", "bitfit"):
        run_cell(cell_of(method, context), context)
    reused = outcome(cell_of("sdpt", context), context)
    assert len(builds) == 0  # the base built for the first cell served all of them

    assert reused[:3] == fresh[:3]
    assert reused[3].keys() == fresh[3].keys()
    assert all(torch.equal(reused[3][name], fresh[3][name]) for name in fresh[3])


def test_the_kept_base_is_never_handed_out(tmp_path_factory):
    from bench.models import ModelInputs

    warm.forget_base_models()
    first = warm.base_model("glip-nano", ModelInputs(None, None))
    second = warm.base_model("glip-nano", ModelInputs(None, None))
    assert first is not second and first.tokenizer is second.tokenizer
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    third = warm.base_model("glip-nano", ModelInputs(None, None))
    assert torch.equal(next(third.parameters()), next(second.parameters()))
    # a randomly initialised base is the same whichever process builds it
    warm.forget_base_models()
    rebuilt = warm.base_model("glip-nano", ModelInputs(None, None))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), second.state_dict().values()))
    warm.forget_base_models()


@pytest.fixture(autouse=True)
def _forget_after():
    yield
    warm.forget_base_models()
