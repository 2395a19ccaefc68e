"""Retention: cells scored on their model's retention set, what tuning cost there, and how it is keyed.

End to end on glip-nano: its retention set is the held-out test split of its own pre-training corpus
(``shapes-pretrain-shapes``); zero-shot keeps the base's score there (a drop of 0), and full
fine-tuning on a shifted dataset (``shapes-colours``, new colour words) loses some of it.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from bench.catalog import Catalog
from bench.cli import main
from bench.errors import BenchError
from bench.runs.record import RunRecord
from bench.runs.resolved import keyed_settings
from bench.runs.retention import retention_set
from bench.runs.store import RunStore
from tests.test_report import make_record

STEPS = {"max_steps": 20, "eval_every": 20, "retention": "true"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """zero-shot and full on shapes-colours with retention on; the results folder and the exit code."""
    root = tmp_path_factory.mktemp("retention")
    settings = [arg for key, value in STEPS.items() for arg in ("--protocol-set", f"{key}={value}")]
    rc = main(["--model", "glip-nano", "--methods", "zero-shot,full", "--datasets", "shapes-colours", "--protocol",
               "shapes", *settings, "--results", str(root / "results"), "--cache-dir", str(root / "cache"),
               "--no-progress", "--jobs", "1"])
    return root / "results", rc


@pytest.mark.extended
def test_every_cell_is_scored_on_the_base_worlds_held_out_images(sweep):
    results, rc = sweep
    assert rc == 0
    records = {r.spec.method: r for r in RunStore(results / "runs").load_records()[0]}
    for record in records.values():
        assert set(record.retention) == {"shapes-pretrain-shapes"} and 0 <= record.retention["shapes-pretrain-shapes"]["AP"] <= 1
    # retention is scored on the pre-training world, not on the tuning data: the numbers differ
    assert records["zero-shot"].retention["shapes-pretrain-shapes"]["AP"] != records["zero-shot"].test["AP"]


@pytest.mark.extended
def test_full_fine_tuning_loses_more_retention_than_zero_shot(sweep):
    results, _ = sweep
    board = pd.read_csv(results / "leaderboard.csv").set_index("method")
    assert board.loc["zero-shot", "retention_drop"] == 0
    assert board.loc["full", "retention_drop"] > 0  # measured: 5.1 points after 30 steps (README)
    assert "retention drop" in (results / "leaderboard.md").read_text()
    assert (results / "figures" / "ap_vs_retention_loss.svg").is_file()


def test_retention_off_keeps_the_keys_it_had_and_on_changes_them():
    settings = {"method_config": {}, "protocol": {"batch_size": 4, "retention": False}}
    assert keyed_settings(settings)["protocol"] == {"batch_size": 4}  # as before the field existed
    settings["protocol"]["retention"] = True
    assert keyed_settings(settings)["protocol"] == {"batch_size": 4, "retention": True}


def test_a_record_keeps_its_retention_metrics_through_json():
    record = dataclasses.replace(make_record("full", "a", 0.4), retention={"coco": {"AP": 0.25, "AP50": 0.4}})
    assert RunRecord.from_json(record.to_json()).retention == {"coco": {"AP": 0.25, "AP50": 0.4}}
    assert RunRecord.from_json(make_record("full", "a", 0.4).to_json()).retention == {}


def test_a_model_without_a_retention_set_is_refused_with_where_to_declare_one(tmp_path):
    (tmp_path / "mine.yaml").write_text("datasets:\n  d: {root: x, splits: {test: {images: i, annotations: a.json}}}\n")
    with pytest.raises(BenchError, match=r"glip-t declares none\. Add retention: .*datasets/models\.yaml"):
        retention_set(Catalog.load(tmp_path), "glip-t")


def test_every_registered_model_declares_a_retention_set_the_catalog_has():
    catalog = Catalog.load()
    for entry in catalog.models:
        for name in retention_set(catalog, entry.name).datasets:
            assert name in catalog.datasets
