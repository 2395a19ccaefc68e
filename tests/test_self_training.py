"""Self-training: a cell trains on the teacher's pseudo-labels and is scored on the real test labels.

End to end on the shapes world with glip-nano as its own zero-shot teacher; then the labels a cell
trains on are checked against the pseudo-label file and the real annotations, and the file's quality
against a hand-computed case.
"""

from __future__ import annotations

import json

import pytest

from bench.catalog import Catalog, load_split_annotations
from bench.cli import main
from bench.data.coco_format import validate_coco
from bench.runs.cell import training_and_validation
from bench.runs.plan import RunContext
from bench.runs.pseudo_labels import FOLDER, label_quality
from bench.runs.store import RunStore

DATASET = "shapes-colours"
SETTINGS = {"training_labels": "pseudo", "pseudo_label_threshold": 0.3, "max_steps": 2, "eval_every": 2, "warmup_steps": 0}


def command(results, cache, settings=SETTINGS) -> list[str]:
    return ["--model", "glip-nano", "--methods", "bitfit", "--datasets", DATASET, "--protocol", "shapes",
            *[arg for key, value in settings.items() for arg in ("--protocol-set", f"{key}={value}")],
            "--results", str(results), "--cache-dir", str(cache), "--no-progress"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("self-training")
    results, cache = root / "results", root / "cache"
    assert main(command(results, cache)) == 0
    (record,), _ = RunStore(results / "runs").load_records()
    return results, cache, record


def test_the_cell_trains_on_the_pseudo_labels_and_keeps_real_validation(sweep):
    results, cache, record = sweep
    (labels_file,) = (results / "runs" / FOLDER).glob(f"{DATASET}-*.json")
    pseudo = json.loads(labels_file.read_text())
    dataset = Catalog.load().dataset(DATASET)
    real = load_split_annotations(dataset, "train", None, cache)
    context = RunContext(results=results, cache_dir=cache)
    train, validation = training_and_validation(dataset, record.spec, context)
    boxes = lambda annotations: sorted((a["image_id"], a["category_id"], tuple(round(v, 3) for v in a["bbox"]))
                                       for a in annotations)
    used = boxes(train.annotations.data["annotations"])
    assert used == boxes(a for a in pseudo["annotations"] if a["image_id"] in train.annotations.images)
    assert used != boxes(a for a in real.data["annotations"] if a["image_id"] in train.annotations.images)
    assert validation.annotations.path == dataset.split_paths("val", None, cache)[1]  # real labels
    quality = record.provenance["pseudo_labels"]
    assert quality["file"] == str(labels_file) and 0 <= quality["precision"] <= 1 and 0 <= quality["recall"] <= 1
    assert quality["boxes"] == len(pseudo["annotations"]) > 0 and "AP" in record.test


def test_the_pseudo_labels_are_part_of_the_run_key(sweep, tmp_path, capsys):
    results, cache, record = sweep
    (labels_file,) = (results / "runs" / FOLDER).glob(f"{DATASET}-*.json")
    assert main([*command(results, cache), "--dry-run"]) == 0
    assert record.key in capsys.readouterr().out  # planned again: the same key, nothing to run
    data = json.loads(labels_file.read_text())
    data["annotations"] = data["annotations"][:-1]
    labels_file.write_text(json.dumps(data))
    assert main([*command(results, cache), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert record.key not in out and "1 to run" in out


def test_label_quality_matches_a_hand_computed_case():
    real = validate_coco({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]}]}, "real.json")
    pseudo = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},    # IoU 81/119 = 0.68 with box 1: right
              {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},    # box 1 already matched: wrong
              {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]}]  # box 2's place, wrong class: wrong
    assert label_quality(real, pseudo) == {"boxes": 3, "real_boxes": 2, "precision": 1 / 3, "recall": 1 / 2}
