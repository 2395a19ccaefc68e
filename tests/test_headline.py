"""The README's headline command, run as written on a small tree laid out as ODinW13 really is.

``python run_bench.py --methods sdpt,vpt,lora --suite odinw13 --data-root DATA`` (a user adds
``--model glip-t --weights glip_tiny_model_o365_goldg.pth``; here the packaged CPU model
``glip-nano``, which needs no ``--weights``) on :func:`tests.suite_tree.build_odinw13_tree`:
the data check, the plan, and the whole sweep end to end on the local executor, cut to one step a
cell, then the same command again, which finds every cell done.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.catalog import Catalog
from bench.cli import main
from bench.data.holdout import DECLARED, HELD_OUT
from bench.runs.store import RunStore
from tests.suite_tree import build_odinw13_tree

METHODS = ("sdpt", "vpt", "lora")
HEADLINE = ["--methods", ",".join(METHODS), "--suite", "odinw13"]
HELD_OUT_DATASET = "odinw-pascalvoc"  # its val and test are one file
# One optimiser step of batch 1 and one validation a cell: glip-odinw (the default protocol) with its
# 200-epoch budget cut to a step; its best-val selection is kept, so PascalVOC's validation is held out.
TINY = {"max_steps": 1, "warmup_steps": 0, "eval_every": 1, "batch_size": 1}
# glip-nano's text encoder has 64 slots and a character-level vocabulary, so PascalVOC's 20 class names
# (136 tokens) do not fit one caption: its cells caption them in chunks (GLIP-T's 256 slots hold them whole).


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return build_odinw13_tree(tmp_path_factory.mktemp("odinw13") / "DATA")


@pytest.fixture(scope="module")
def datasets() -> tuple[str, ...]:
    return Catalog.load().suite("odinw13").datasets


def _protocol_args() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--protocol-set", f"{key}={value}")]


def test_tree_has_the_declared_layout(data_root, datasets):
    catalog = Catalog.load()
    assert len(datasets) == 13
    for name in datasets:
        spec = catalog.dataset(name)
        for split in spec.splits:
            images, annotations = spec.split_paths(split, data_root)
            data = json.loads(annotations.read_text())
            assert [c["id"] for c in data["categories"]] == sorted(spec.category_names)
            assert {c["id"]: c["name"] for c in data["categories"]} == dict(spec.category_names)
            for image in data["images"]:
                assert (images / image["file_name"]).read_bytes()[-2:] == b"\xff\xd9"  # a whole JPEG
            for ann in data["annotations"]:
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 48 and ann["iscrowd"] == 0
            if split == "train":
                assert len(data["images"]) == 6
                assert {a["category_id"] for a in data["annotations"]} == set(spec.category_names)
    odinw = data_root / "odinw"
    assert sorted(p.name for p in (odinw / "PascalVOC").iterdir()) == ["train", "valid"]  # no test split
    assert (odinw / "EgoHands/generic/mini_val/annotations_without_background.json").is_file()
    assert (odinw / "VehiclesOpenImages/416x416/mini_val/annotations_without_background.json").is_file()
    pistols = sorted(p.name for p in (odinw / "pistols/export").iterdir() if p.suffix == ".json")
    assert pistols == [f"{s}_annotations_without_background.json" for s in ("test", "train", "val")]


def test_headline_data_passes_the_check_and_plans_every_cell(data_root, datasets, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["--suite", "odinw13", "--data-root", str(data_root), "--check-data", "--no-progress",
                 "--cache-dir", str(cache)]) == 0
    assert "All 13 dataset(s) passed the header check" in capsys.readouterr().out

    assert main([*HEADLINE, "--data-root", str(data_root), "--model", "glip-nano", "--dry-run", "--no-progress",
                 "--cache-dir", str(cache), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    planned = [line.split() for line in out.splitlines() if line.startswith("todo ")]
    assert sorted((fields[2], fields[3]) for fields in planned) == sorted((m, d) for m in METHODS for d in datasets)
    assert re.search(r"\b39 cells: 0 done, 39 to run\b", out)
    assert f"Validation of {HELD_OUT_DATASET} is held out" in out
    assert not (tmp_path / "results" / "runs" / "done").exists()  # a dry run runs nothing


@pytest.mark.slow
def test_headline_command_runs_end_to_end(data_root, datasets, tmp_path, capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    command = [*HEADLINE, "--data-root", str(data_root), "--model", "glip-nano", "--results", str(results),
               "--no-progress", "--cache-dir", str(cache), "--jobs", "2", *_protocol_args()]
    rc = main(command)
    out, err = capsys.readouterr()
    store = RunStore(results / "runs")
    records, unreadable = store.load_records()
    assert not unreadable

    # Every cell that finished has its record, one "done" line naming it, and the validation it planned.
    done_lines = [line for line in out.splitlines() if line.startswith("done ")]
    assert len(done_lines) == len(records)
    for record in records:
        assert sum(str(store.result_path(record.key)) in line for line in done_lines) == 1
        assert record.spec.validation == (HELD_OUT if record.spec.dataset == HELD_OUT_DATASET else DECLARED)
        assert record.spec.model == "glip-nano" and record.spec.protocol == "glip-odinw"
        assert record.cost.train_steps == 1
    # The leaderboards of the sweep are written under --results, and name the suite.
    for name in ("leaderboard.md", "leaderboard.csv", "comparisons.md"):
        assert "odinw13" in (results / name).read_text(), name
    assert set(pd.read_csv(results / "leaderboard.csv")["method"]) == set(METHODS)

    assert rc == 0, err
    assert not store.failures()
    assert len(list((results / "runs" / "done").glob("*.json"))) == 39
    assert sorted((r.spec.method, r.spec.dataset) for r in records) == sorted((m, d) for m in METHODS for d in datasets)

    # The same command again runs nothing and reports the same cells.
    assert main(command) == 0
    again = capsys.readouterr().out
    assert re.search(r"\b39 cells: 39 already done, running 0\b", again)
    assert not [line for line in again.splitlines() if line.startswith("done ")]
    assert len(list((results / "runs" / "done").glob("*.json"))) == 39
