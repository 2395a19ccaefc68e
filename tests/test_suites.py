"""The suites beyond ODinW13, on tiny trees in their exact released layouts (:mod:`tests.suite_tree`).

For each suite: ``--check-data`` accepts the tree and ``--dry-run`` plans every cell; one dataset of
each runs end to end with glip-nano for one step. Then what is particular to them: Roboflow exports
are read as RF100-VL's package cleans them without writing a byte, and a released K-shot split is
what a K-shot cell trains on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.catalog import Catalog, load_split_annotations
from bench.cli import main
from bench.data.holdout import DECLARED, HELD_OUT
from bench.errors import BenchError, DataError
from bench.runs.cell import training_and_validation
from bench.runs.plan import RunContext
from bench.runs.record import RunSpec
from bench.runs.store import RunStore
from tests.suite_tree import INVENTED_CLASSES, build_suite_tree

# suite -> (the shots its cells are planned at, its number of datasets, a dataset run end to end)
SUITES = {
    "odinw35": (["full"], 35, "odinw-chess"),  # class 1 is named "  ", as in GLIP's config
    "rf100-vl": (["full"], 100, "rf-aquarium-combined"),
    "rf20-vl": (["full"], 20, "rf-wb-prova"),
    "rf20-vl-fsod": (["10"], 20, "rf20fsod-actions"),
    "rf100-vl-fsod": (["10"], 100, "rf100fsod-grccs"),
    "cd-fsod": (["1", "5", "10"], 6, "cdfsod-dior"),
}
TINY = {"max_steps": 1, "warmup_steps": 0, "eval_every": 1, "batch_size": 1}


def tiny_protocol() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--protocol-set", f"{key}={value}")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One tree holding every suite above (RF20-VL's datasets are RF100-VL's, seven of ODinW35's are
    ODinW13's)."""
    root = tmp_path_factory.mktemp("suites") / "DATA"
    for suite in SUITES:
        build_suite_tree(root, suite, images_per_split=2, train_images=12)
    return root


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_the_tree_passes_the_data_check_and_every_cell_is_planned(suite, data_root, tmp_path, capsys):
    shots, size, _ = SUITES[suite]
    assert len(Catalog.load().suite(suite).datasets) == size
    common = ["--suite", suite, "--data-root", str(data_root), "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--check-data"]) == 0
    assert f"All {size} dataset(s) passed the header check" in capsys.readouterr().out

    seeds = ["--seeds", "0,1"]
    assert main([*common, "--methods", "bitfit", "--model", "glip-nano", "--shots", ",".join(shots), *seeds,
                 "--dry-run", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    cells = size * len(shots) * 2
    assert re.search(rf"\b{cells} cells: 0 done, {cells} to run\b", out)
    planned = [line for line in out.splitlines() if line.startswith("todo ")]
    if shots != ["full"]:  # released splits: one split, whatever the seeds
        assert all("split=released" in line for line in planned)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_one_dataset_of_the_suite_runs_end_to_end(suite, data_root, tmp_path, capsys):
    shots, _, dataset = SUITES[suite]
    results = tmp_path / "results"
    assert main(["--datasets", dataset, "--data-root", str(data_root), "--methods", "bitfit", "--model", "glip-nano",
                 "--shots", shots[0], "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--results", str(results),
                 *tiny_protocol()]) == 0, capsys.readouterr().err
    (record,), unreadable = RunStore(results / "runs").load_records()
    assert not unreadable and record.spec.dataset == dataset and record.cost.train_steps == 1
    assert "AP" in record.test
    # CD-FSOD has no validation of its own: best-val selection held it out of the training pool.
    assert record.spec.validation == (HELD_OUT if suite == "cd-fsod" else DECLARED)


def test_odinw35_boggle_with_glips_odd_class_names_runs(data_root, tmp_path, capsys):
    """Boggle's classes include "o " and a backslash: they caption, train and score like any other."""
    assert main(["--datasets", "odinw-boggle", "--data-root", str(data_root), "--methods", "zero-shot", "--model",
                 "glip-nano", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--results",
                 str(tmp_path / "results"), *tiny_protocol()]) == 0, capsys.readouterr().err


# Roboflow exports -------------------------------------------------------------------------------

def test_the_roboflow_placeholder_is_dropped_and_ids_start_at_zero_without_writing(data_root):
    spec = Catalog.load().dataset("rf-wb-prova")
    path = spec.split_paths("train", data_root)[1]
    raw = path.read_bytes()
    on_disk = json.loads(raw)
    assert on_disk["categories"][0] == {"id": 0, "name": "wb-prova", "supercategory": "none"}
    annotations = load_split_annotations(spec, "train", data_root)
    assert annotations.category_names() == dict(enumerate(INVENTED_CLASSES))
    shifted = sorted(a["category_id"] - 1 for a in on_disk["annotations"])
    assert sorted(a["category_id"] for a in annotations.data["annotations"]) == shifted
    assert path.read_bytes() == raw  # read-only: nothing written back


def test_a_file_the_official_package_already_cleaned_reads_the_same(data_root, tmp_path):
    catalog = Catalog.load()
    spec = catalog.dataset("rf-wb-prova")
    raw = load_split_annotations(spec, "train", data_root)
    cleaned_root = tmp_path / "DATA"
    cleaned_file = spec.root_dir(cleaned_root) / spec.split("train").annotations
    cleaned_file.parent.mkdir(parents=True)
    data = json.loads(spec.split_paths("train", data_root)[1].read_text())
    data["categories"] = [{**c, "id": c["id"] - 1} for c in data["categories"] if c["id"] != 0]
    data["annotations"] = [{**a, "category_id": a["category_id"] - 1, "id": a["id"] + 1} for a in data["annotations"]]
    cleaned_file.write_text(json.dumps(data))
    again = load_split_annotations(spec, "train", cleaned_root)
    assert again.category_names() == raw.category_names()
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in again.data["annotations"]] == \
        [(a["image_id"], a["category_id"], a["bbox"]) for a in raw.data["annotations"]]


def test_a_placeholder_that_owns_boxes_is_refused(data_root, tmp_path):
    spec = Catalog.load().dataset("rf-wb-prova")
    data = json.loads(spec.split_paths("train", data_root)[1].read_text())
    data["annotations"][0]["category_id"] = 0
    broken = spec.root_dir(tmp_path) / spec.split("train").annotations
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"owns 1 box\(es\).*roboflow_placeholder: false"):
        load_split_annotations(spec, "train", tmp_path)


def test_a_file_overwritten_with_null_names_the_package_version_that_did_it(tmp_path):
    spec = Catalog.load().dataset("rf-wb-prova")
    broken = spec.root_dir(tmp_path) / spec.split("train").annotations
    broken.parent.mkdir(parents=True)
    broken.write_text("null")
    with pytest.raises(DataError, match=r"holds only null.*rf100vl 1\.1\.2 or later"):
        load_split_annotations(spec, "train", tmp_path)


# Released K-shot splits ---------------------------------------------------------------------------

def _spec(dataset: str, shots: int | None, validation: str = DECLARED) -> RunSpec:
    return RunSpec(model="glip-nano", weights=None, method="bitfit", dataset=dataset, shots=shots, split_seed=None,
                   train_seed=0, protocol="shapes", validation=validation)


def test_a_k_shot_cell_trains_on_the_released_file(data_root, tmp_path):
    catalog = Catalog.load()
    spec = catalog.dataset("cdfsod-uodd")
    context = RunContext(results=tmp_path / "results", data_root=data_root, cache_dir=tmp_path / "cache")
    for shots in (1, 5, 10):
        released = json.loads(spec.split_paths(f"train-{shots}shot", data_root)[1].read_text())
        train, validation = training_and_validation(spec, _spec("cdfsod-uodd", shots), context)
        assert sorted(train.annotations.images) == sorted(image["id"] for image in released["images"])
        assert validation.annotations.path == spec.split_paths("val", data_root)[1]
        train, held_out = training_and_validation(spec, _spec("cdfsod-uodd", shots, HELD_OUT), context)
        assert sorted(train.annotations.images) == sorted(image["id"] for image in released["images"])
        assert held_out.annotations.path == spec.split_paths("train", data_root)[1]  # drawn from the pool ...
        assert not set(held_out.annotations.images) & set(train.annotations.images)  # ... outside the split


def test_shots_a_dataset_has_no_training_data_for_are_refused_before_work(data_root, tmp_path, capsys):
    rc = main(["--suite", "rf20-vl-fsod", "--methods", "bitfit", "--model", "glip-nano", "--data-root", str(data_root),
               "--shots", "5", "--dry-run", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
               "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no full training split, only the splits released for 10 shot(s)" in err
    assert "--shots 10" in err and not (tmp_path / "results" / "runs").exists()


def test_a_released_split_key_differs_from_a_drawn_one(data_root, tmp_path):
    """The released file is part of the data fingerprint: editing it changes every key that uses it."""
    from bench.runs.fingerprint import FingerprintCache, dataset_fingerprint

    spec = Catalog.load().dataset("cdfsod-uodd")
    files = {split: spec.split_paths(split, data_root)[1] for split in spec.splits}
    first = dataset_fingerprint(spec, files, FingerprintCache(tmp_path / "a.json"))
    copy = tmp_path / "5_shot.json"
    copy.write_text(files["train-5shot"].read_text().replace('"iscrowd": 0', '"iscrowd": 0 '))
    assert dataset_fingerprint(spec, files | {"train-5shot": copy}, FingerprintCache(tmp_path / "b.json")) != first


def test_an_unknown_released_split_name_is_refused(tmp_path):
    (tmp_path / "mine.yaml").write_text("datasets:\n  d:\n    root: x\n    splits: {train-fewshot: {images: a, annotations: b}}\n")
    with pytest.raises(BenchError, match=r"train-<K>shot"):
        Catalog.load(tmp_path)
