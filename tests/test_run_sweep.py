"""A sweep end to end with the local executor: results, costs, provenance, skipping and failures.

One module-scoped sweep (zero-shot and SDPT x two synthetic datasets x two seeds, a few steps each)
is shared by the tests that read its results; the failure tests run their own small sweep on copies
of a synthetic dataset placed under a data root, so that deleting a file breaks only them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.cli import main
from bench.launch.local import run_local
from bench.models import MODELS
from bench.runs.cell import SELECTED_WEIGHTS
from bench.runs.plan import missing_cells, plan_cells
from bench.runs.record import RESULTS_VERSION
from bench.train.checkpoint import CHECKPOINT
from bench.train.loop import BEST_WEIGHTS
from bench.train.protocol import resolve_protocol
from bench.tuning.base import build_method
from tests.run_support import MODEL, TINY_PROTOCOL, plan_lines, quiet_context, synthetic_cache, tiny_request

METHODS = ("zero-shot", "sdpt")
SDPT_OPTIONS = {"num_tokens": 4}
DATASETS = ("shapes-colours", "shapes-dense")
SEEDS = (0, 1)
CELLS = 6  # sdpt: 2 datasets x 2 seeds; zero-shot: once per dataset
STEPS = TINY_PROTOCOL["max_steps"]
REPO = Path(__file__).resolve().parents[1]
SCORES = ("AP", "AP50", "AP75")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, DATASETS)
    context = quiet_context(tmp_path_factory.mktemp("sweep"), cache)
    request = tiny_request(METHODS, DATASETS, SEEDS, method_options={"sdpt": SDPT_OPTIONS})
    cells = plan_cells(request, context)
    outcome = run_local(missing_cells(cells, context.store), context)
    records, skipped = context.store.load_records()
    return SimpleNamespace(context=context, request=request, cells=cells, outcome=outcome,
                           records={r.key: r for r in records}, skipped=skipped)


def expected_trainable(method: str, options: dict) -> tuple[int, int]:
    """(the method's own trainable count, the base's parameter count) on a fresh glip-nano."""
    model = MODELS.get(MODEL)()
    base = sum(p.numel() for n, p in model.named_parameters() if n in set(model.base_parameter_names()))
    return build_method(method, options).expected_trainable(model), base


def test_every_cell_finishes_with_one_result_file(sweep):
    # sdpt once per seed; zero-shot trains nothing, so once per dataset whatever the seeds
    assert len(sweep.cells) == len(DATASETS) * (len(SEEDS) + 1) == CELLS
    assert sweep.outcome.failed == {}
    assert sorted(sweep.outcome.finished) == sorted(cell.key for cell in sweep.cells)
    files = sorted(p.stem for p in sweep.context.store.done_dir.glob("*.json"))
    assert files == sorted(cell.key for cell in sweep.cells)
    assert sweep.skipped == []
    assert not sweep.context.store.failed_dir.exists() or not any(sweep.context.store.failed_dir.iterdir())


def test_each_record_is_its_cell_with_finite_val_and_test_scores(sweep):
    for cell in sweep.cells:
        record = sweep.records[cell.key]
        assert record.spec == cell.spec
        for split in (record.val, record.test):
            for name in SCORES:
                assert math.isfinite(split[name]) and 0.0 <= split[name] <= 1.0, (cell.spec, split)
        trains = cell.spec.method != "zero-shot"
        assert record.best_step == (STEPS if trains else 0)  # one validation, at the last step


def test_costs_count_the_methods_own_parameters_and_measure_memory(sweep):
    counts = {method: expected_trainable(method, SDPT_OPTIONS if method == "sdpt" else {}) for method in METHODS}
    assert counts["sdpt"][0] > 0
    for cell in sweep.cells:
        cost = sweep.records[cell.key].cost
        trainable, base = counts[cell.spec.method]
        assert cost.trainable_params == trainable
        assert cost.base_params == base
        assert cost.stored_bytes == 4 * trainable  # float32 tensors
        assert cost.trainable_percent == pytest.approx(100.0 * trainable / base)
        assert cost.peak_memory_bytes > 0 and cost.peak_memory_kind in ("rss", "rss-process")
        assert cost.eval_images_per_s > 0 and cost.wall_s > 0
        if cell.spec.method == "zero-shot":
            assert cost.train_steps == 0 and cost.train_images_per_s == 0.0
        else:
            assert cost.train_steps == STEPS and cost.train_images_per_s > 0


def test_provenance_names_commit_packages_and_device(sweep):
    for record in sweep.records.values():
        p = record.provenance
        if (REPO / ".git").exists():
            assert len(p["git_commit"]) == 40 and int(p["git_commit"], 16) >= 0
        assert isinstance(p["git_dirty"], bool)
        assert p["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
        assert set(p["packages"]) >= {"torch", "torchvision", "transformers", "numpy"}
        assert p["device"].startswith("cpu")
        assert p["results_version"] == RESULTS_VERSION and p["python"] and p["host"]
        assert p["started"] <= p["finished"]


def test_the_stored_file_has_the_documented_layout(sweep):
    path = sweep.context.store.result_path(sweep.cells[0].key)
    data = json.loads(path.read_text())
    assert data["key"] == sweep.cells[0].key
    assert set(data) == {"format", "key", "spec", "metrics", "cost", "provenance", "resolved"}


def test_each_record_stores_what_its_run_resolved_to(sweep):
    """The method config with every default, the protocol for its shots and the catalog entry."""
    for cell in sweep.cells:
        resolved = sweep.records[cell.key].resolved
        method = build_method(cell.spec.method, dict(cell.spec.method_options)).config
        assert resolved["method_config"] == json.loads(method.to_json())
        if cell.spec.method == "sdpt":
            assert resolved["method_config"]["num_tokens"] == SDPT_OPTIONS["num_tokens"]
            assert resolved["method_config"]["lr"] == method.lr  # a default, not given by the user
        assert resolved["protocol"]["max_steps"] == STEPS and resolved["protocol"]["name"] == cell.spec.protocol
        assert resolved["protocol"]["batch_size"] == resolve_protocol(cell.spec.protocol, cell.spec.shots_label,
                                                                       cell.spec.protocol_overrides).batch_size
        assert resolved["dataset"]["name"] == cell.spec.dataset and set(resolved["dataset"]["splits"]) == {"train", "val", "test"}
        assert "source" not in resolved["dataset"]


def test_a_finished_cell_keeps_its_selected_weights_but_not_its_checkpoint(sweep):
    for cell in sweep.cells:
        work = sweep.context.store.work_root / cell.key
        assert not (work / CHECKPOINT).exists() and not (work / BEST_WEIGHTS).exists()
        assert (work / SELECTED_WEIGHTS).is_file() == (cell.spec.method != "zero-shot")


def test_planning_again_finds_nothing_to_run_and_force_plans_everything(sweep):
    again = plan_cells(sweep.request, sweep.context)
    assert [c.key for c in again] == [c.key for c in sweep.cells]
    assert missing_cells(again, sweep.context.store) == []
    forced = missing_cells(again, sweep.context.store, force=True)
    assert [c.key for c in forced] == [c.key for c in again] and all(c.rerun for c in forced)  # run even though done
    assert run_local(missing_cells(again, sweep.context.store), sweep.context).finished == []


def cli_args(sweep) -> list[str]:
    return [
        "--methods", ",".join(METHODS), "--datasets", ",".join(DATASETS), "--seeds", ",".join(map(str, SEEDS)),
        "--model", MODEL, "--protocol", "shapes", "--method-set", "sdpt.num_tokens=4",
        *[arg for k, v in TINY_PROTOCOL.items() for arg in ("--protocol-set", f"{k}={v}")],
        "--results", str(sweep.context.results), "--cache-dir", str(sweep.context.cache_dir), "--no-progress",
    ]


def test_cli_dry_run_shows_the_finished_sweep_as_done(sweep, capsys):
    assert main([*cli_args(sweep), "--dry-run"]) == 0
    lines = plan_lines(capsys.readouterr().out)
    assert lines[-1] == f"{CELLS} cells: {CELLS} done, 0 to run."
    rows = lines[:-1]
    assert len(rows) == CELLS and all(row.startswith("done  ") for row in rows)
    assert {row.split()[1] for row in rows} == {cell.key for cell in sweep.cells}
    assert any("sdpt[num_tokens=4]" in row for row in rows)


def test_cli_dry_run_with_force_shows_every_cell_as_todo(sweep, capsys):
    assert main([*cli_args(sweep), "--dry-run", "--force"]) == 0
    lines = plan_lines(capsys.readouterr().out)
    assert lines[-1] == f"{CELLS} cells: 0 done, {CELLS} to run."
    assert all(row.startswith("todo  ") for row in lines[:-1])


# ------------------------------------------------------------------------------------ failures
CATALOG = """
defaults:
  splits:
    train: {images: train, annotations: train/annotations.json}
    val: {images: val, annotations: val/annotations.json}
    test: {images: test, annotations: test/annotations.json}
datasets:
  copy-a: {root: copy-a}
  copy-b: {root: copy-b}
"""


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Two on-disk datasets (copies of shapes-colours) under a data root, and a catalog naming them."""
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    root = tmp_path_factory.mktemp("failures")
    for name in ("copy-a", "copy-b"):
        shutil.copytree(cache / "synthetic" / "shapes-odinw" / "colours", root / "data" / name)
    (root / "catalog").mkdir()
    (root / "catalog" / "copies.yaml").write_text(CATALOG)
    return quiet_context(root / "results", cache, data_root=root / "data", catalog_dir=root / "catalog")


def test_failing_cells_are_recorded_and_the_others_finish(copies):
    # coop with more context vectors than glip-nano's 64 text slots passes planning (the config is
    # valid) and fails when installed; copy-b loses its validation annotations after planning.
    request = tiny_request(["coop", "zero-shot"], ["copy-a", "copy-b"], method_options={"coop": {"context_tokens": 100}})
    cells = plan_cells(request, copies)
    by_name = {(c.spec.method, c.spec.dataset): c.key for c in cells}
    annotations = copies.data_root / "copy-b" / "val" / "annotations.json"
    kept = annotations.read_bytes()
    annotations.unlink()

    outcome = run_local(missing_cells(cells, copies.store), copies)

    assert outcome.finished == [by_name["zero-shot", "copy-a"]]
    assert set(outcome.failed) == {by_name["coop", "copy-a"], by_name["coop", "copy-b"], by_name["zero-shot", "copy-b"]}
    assert "context_tokens=100" in outcome.failed[by_name["coop", "copy-a"]]
    assert "annotations.json" in outcome.failed[by_name["zero-shot", "copy-b"]]
    failures = copies.store.failures()
    assert set(failures) == set(outcome.failed)
    failure = failures[by_name["zero-shot", "copy-b"]]
    assert failure["spec"]["dataset"] == "copy-b" and "Traceback" in failure["traceback"]
    assert [p.stem for p in copies.store.done_dir.glob("*.json")] == [by_name["zero-shot", "copy-a"]]

    # Put the file back: the same keys (same content), only the failed cells are run again, and the
    # cell that now finishes loses its failure file.
    annotations.write_bytes(kept)
    again = plan_cells(request, copies)
    assert [c.key for c in again] == [c.key for c in cells]
    todo = missing_cells(again, copies.store)
    assert {c.key for c in todo} == set(outcome.failed)
    retry = run_local(todo, copies)
    assert retry.finished == [by_name["zero-shot", "copy-b"]]
    assert set(copies.store.failures()) == {by_name["coop", "copy-a"], by_name["coop", "copy-b"]}


def test_cli_on_the_finished_sweep_runs_nothing_and_writes_the_leaderboard(sweep, capsys):
    assert main(cli_args(sweep)) == 0
    out = capsys.readouterr().out
    assert f"{CELLS} cells: {CELLS} already done, running 0 with the local executor." in out
    assert f"comparisons and figures are written under {sweep.context.results}" in out
    assert len(list(sweep.context.store.done_dir.glob("*.json"))) == CELLS
