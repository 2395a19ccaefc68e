"""``run_bench.py eval --tuned``: a cell's selected weights scored alone give the record's test AP,
and are refused on another base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bench.cli import main
from bench.errors import BenchError
from bench.launch.local import run_local
from bench.models import MODELS
from bench.models.glip.model import NANO_WEIGHTS
from bench.runs.cell import SELECTED_WEIGHTS
from bench.runs.evaluate_tuned import evaluate_tuned
from bench.runs.plan import missing_cells, plan_cells
from bench.tuning.base import build_method
from bench.tuning.state import save_tuned
from tests.run_support import quiet_context, synthetic_cache, tiny_request

DATASET = "shapes-colours"
OTHER_DATASET = "shapes-dense"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One trained cell (sdpt, a few steps) with its record and its selected weights."""
    cache = synthetic_cache(tmp_path_factory, [DATASET, OTHER_DATASET])
    weights = tmp_path_factory.mktemp("weights") / "nano.safetensors"
    shutil.copy(NANO_WEIGHTS, weights)
    context = quiet_context(tmp_path_factory.mktemp("results"), cache)
    request = tiny_request(["sdpt"], [DATASET], weights=str(weights), method_options={"sdpt": {"num_tokens": 4}})
    [cell] = plan_cells(request, context)
    run_local(missing_cells([cell], context.store), context)
    return context, context.store.read_result(cell.key), context.store.work_dir(cell.key) / SELECTED_WEIGHTS, weights


@pytest.mark.slow
def test_scoring_the_selected_weights_alone_gives_the_records_test_ap(finished):
    context, record, tuned, _ = finished
    result = evaluate_tuned(tuned, context)
    assert result.run_key == record.key and result.dataset == DATASET and result.split == "test"
    assert result.evaluation.metrics == pytest.approx(dict(record.test), abs=0, nan_ok=True)  # bit for bit


@pytest.mark.slow
def test_the_command_prints_the_scores_and_takes_another_dataset(finished, capsys):
    context, record, tuned, _ = finished
    common = ["--tuned", str(tuned), "--cache-dir", str(context.cache_dir), "--results", str(context.results), "--no-progress"]
    assert main(["eval", *common]) == 0
    out = capsys.readouterr().out
    assert f"run {record.key}" in out and f"AP {100 * record.test['AP']:.2f}" in out
    assert main(["eval", *common, "--dataset", OTHER_DATASET, "--split", "val"]) == 0
    assert f"scored on {OTHER_DATASET} val" in capsys.readouterr().out


@pytest.mark.slow
def test_a_state_is_refused_on_another_base(finished, capsys, tmp_path):
    context, _, tuned, weights = finished
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    other = tmp_path / "other.safetensors"
    save_file({**tensors, name: tensors[name] + 1}, other)  # same architecture, other values
    common = ["eval", "--tuned", str(tuned), "--cache-dir", str(context.cache_dir), "--no-progress"]
    assert main([*common, "--weights", str(other)]) == 2
    err = capsys.readouterr().err
    assert "another base" in err and str(other) in err and "Traceback" not in err
    moved = tmp_path / "moved.safetensors"
    shutil.copy(weights, moved)  # the same content elsewhere is the same base
    assert main([*common, "--weights", str(moved)]) == 0


def test_a_state_saved_outside_a_sweep_is_refused(tmp_path):
    model = MODELS.get("glip-nano")()
    method = build_method("bitfit")
    path = save_tuned(tmp_path / "loose.safetensors", model, method, method.apply(model))
    with pytest.raises(BenchError, match="does not say which run made it"):
        evaluate_tuned(path, quiet_context(tmp_path / "results", tmp_path / "cache"))


def test_a_file_that_is_no_tuned_state_is_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    with pytest.raises(BenchError, match="cannot be read|not a tuned state"):
        evaluate_tuned(Path(path), quiet_context(tmp_path / "results", tmp_path / "cache"))
