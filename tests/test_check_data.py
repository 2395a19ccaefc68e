"""The data check: every problem training would hit, found up front and reported in one error."""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.catalog import Catalog, DatasetSpec, SplitSpec, load_split_annotations
from bench import catalog_check as check
from bench.catalog_check import SplitSummary, check_datasets
from bench.data.dataset import DetectionDataset
from bench.errors import BenchError, DataError

SIZE = 16


@pytest.fixture(autouse=True)
def no_raw_warnings():
    """Nothing the check does may surface as a raw Python warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not caught, [str(w.message) for w in caught]


@pytest.fixture
def roots(tmp_path):
    data_root, cache_root = tmp_path / "data", tmp_path / "cache"
    data_root.mkdir()
    return data_root, cache_root


def noise_image(seed: int) -> Image.Image:
    """Random pixels, so a JPEG's entropy-coded data is a good part of the file."""
    return Image.frombytes("RGB", (SIZE, SIZE), random.Random(seed).randbytes(SIZE * SIZE * 3))


def make_dataset(data_root: Path, name: str = "shapes", splits=("train",), images: int = 3, ext: str = "png",
                 **spec_keys) -> DatasetSpec:
    """``images`` 16x16 images per split with one 8x8 box each, categories 1 and 2."""
    for split in splits:
        folder = data_root / name / split
        folder.mkdir(parents=True)
        data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
        for i in range(1, images + 1):
            noise_image(i).save(folder / f"{i:03d}.{ext}")
            data["images"].append({"id": i, "file_name": f"{i:03d}.{ext}", "width": SIZE, "height": SIZE})
            data["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 8, 8]})
        (data_root / name / f"{split}.json").write_text(json.dumps(data))
    return DatasetSpec(name=name, root=name, splits={s: SplitSpec(s, f"{s}.json") for s in splits}, **spec_keys)


def edit_annotations(data_root: Path, spec: DatasetSpec, edit, split: str = "train") -> Path:
    path = data_root / spec.root / spec.splits[split].annotations
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def image_file(data_root: Path, spec: DatasetSpec, number: int, ext: str = "png", split: str = "train") -> Path:
    return data_root / spec.root / split / f"{number:03d}.{ext}"


def failure(specs, roots, **options) -> str:
    with pytest.raises(DataError) as info:
        check_datasets(specs, *roots, **options)
    return str(info.value)


def test_good_dataset_passes_with_counts(roots):
    spec = make_dataset(roots[0], splits=("train", "val"), images=3)
    [result] = check_datasets([spec], *roots, progress=True)
    assert result.name == "shapes"
    assert result.splits == (
        SplitSummary("train", images=3, boxes=3, classes=2, clipped=0, dropped=0, level="header"),
        SplitSummary("val", images=3, boxes=3, classes=2, clipped=0, dropped=0, level="header"),
    )
    lines = result.summary_lines()
    assert len(lines) == 2 and lines[0].startswith("shapes") and "3 images" in lines[0] and "0 clipped" in lines[0]


def test_missing_image(roots):
    spec = make_dataset(roots[0])
    image_file(roots[0], spec, 2).unlink()
    message = failure([spec], roots)
    assert "1 image(s) are missing (002.png (id 2))" in message
    assert str(roots[0] / "shapes" / "train.json") in message and "obtain the missing images" in message


def test_image_path_that_is_a_folder(roots):
    spec = make_dataset(roots[0])
    path = image_file(roots[0], spec, 3)
    path.unlink()
    path.mkdir()
    assert "1 image path(s) are not regular files (003.png (id 3))" in failure([spec], roots)


def test_jpeg_cut_in_half_is_found_by_the_cheap_check(roots):
    spec = make_dataset(roots[0], ext="jpg")
    path = image_file(roots[0], spec, 1, "jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "001.jpg (id 1)" in failure([spec], roots)


def test_jpeg_missing_only_its_end_is_found_by_the_end_marker(roots):
    spec = make_dataset(roots[0], ext="jpg")
    path = image_file(roots[0], spec, 1, "jpg")
    path.write_bytes(path.read_bytes()[:-40])  # header intact: PIL still opens it
    Image.open(path).close()
    assert "1 image(s) are cut off" in failure([spec], roots)


def test_truncated_png(roots):
    spec = make_dataset(roots[0])
    path = image_file(roots[0], spec, 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "1 image(s) are cut off" in failure([spec], roots)


def test_corrupt_jpeg_pixels_with_intact_end_are_found_only_by_full(roots):
    spec = make_dataset(roots[0], ext="jpg")
    path = image_file(roots[0], spec, 1, "jpg")
    data = bytearray(path.read_bytes())
    scan = data.rfind(b"\xff\xda") + 20
    data[scan: scan + 10] = b"\xff\xc0" + bytes(8)  # a frame marker in the middle of the pixel data
    path.write_bytes(bytes(data))
    assert check_datasets([spec], *roots)[0].splits[0].level == "header"
    message = failure([spec], roots, full=True)
    assert "failed the full data check" in message and "1 image(s) fail to decode (001.jpg (id 1):" in message


def test_size_mismatch_between_annotation_and_file(roots):
    spec = make_dataset(roots[0])
    edit_annotations(roots[0], spec, lambda d: d["images"][1].update(width=32))
    assert "002.png (id 2): file 16x16, annotated 32x16" in failure([spec], roots)


def test_overhanging_box_is_clipped_counted_and_clamped_for_training(roots):
    spec = make_dataset(roots[0])
    edit_annotations(roots[0], spec, lambda d: d["annotations"][0].update(bbox=[10, 2, 8, 8]))  # 6 of 8 columns inside
    [result] = check_datasets([spec], *roots)
    assert result.splits[0].clipped == 1 and result.splits[0].boxes == 3
    dataset = DetectionDataset(load_split_annotations(spec, "train", roots[0]), roots[0] / "shapes" / "train")
    assert dataset[0][1]["boxes"].as_subclass(torch.Tensor).tolist() == [[10.0, 2.0, 16.0, 10.0]]


def test_boxes_are_measured_against_the_file_when_the_annotation_gives_no_size(roots):
    spec = make_dataset(roots[0])
    def edit(data):
        data["images"][0].pop("width")
        data["images"][0]["height"] = None
        data["annotations"][0]["bbox"] = [10, 2, 8, 8]
    edit_annotations(roots[0], spec, edit)
    assert check_datasets([spec], *roots)[0].splits[0].clipped == 1


def test_box_outside_and_negative_width_box_are_refused_in_one_paragraph(roots):
    spec = make_dataset(roots[0])
    def edit(data):
        data["annotations"][0]["bbox"] = [20, 20, 4, 4]
        data["annotations"][2]["bbox"] = [2, 2, -3, 4]
    path = edit_annotations(roots[0], spec, edit)
    message = failure([spec], roots)
    assert "\n" not in message and str(path) in message
    assert "1 box(es) have less than half of their area inside their image ([20, 20, 4, 4] on 001.png (image id 1" \
        in message
    assert "1 box(es) are empty, malformed or non-finite (annotation id 3)" in message
    assert "invalid_boxes: drop" in message


def test_invalid_boxes_drop_turns_them_into_counts_and_out_of_training(roots):
    spec = make_dataset(roots[0], invalid_boxes="drop")
    def edit(data):
        data["annotations"][0]["bbox"] = [13, 2, 8, 8]  # 3 of 8 columns inside
        data["annotations"][2]["bbox"] = [2, 2, -3, 4]
    edit_annotations(roots[0], spec, edit)
    [result] = check_datasets([spec], *roots)
    assert (result.splits[0].boxes, result.splits[0].dropped) == (1, 2)
    assert "2 dropped" in result.summary_lines()[0]
    dataset = DetectionDataset(load_split_annotations(spec, "train", roots[0]), roots[0] / "shapes" / "train")
    assert dataset[0][1]["labels"].tolist() == []


def test_drop_that_would_leave_no_boxes_is_refused(roots):
    spec = make_dataset(roots[0], images=1, invalid_boxes="drop")
    edit_annotations(roots[0], spec, lambda d: d["annotations"][0].update(bbox=[40, 40, 4, 4]))
    assert "All 1 boxes in" in failure([spec], roots)


def test_empty_splits(roots):
    spec = make_dataset(roots[0], splits=("train", "val"))
    edit_annotations(roots[0], spec, lambda d: d.update(annotations=[]))
    edit_annotations(roots[0], spec, lambda d: d.update(images=[], annotations=[]), split="val")
    message = failure([spec], roots)
    assert "\n" not in message
    assert "train.json lists no annotations at all" in message
    assert "val.json: it lists no images" in message


def test_several_bad_datasets_give_one_error_with_a_paragraph_each(roots):
    good = make_dataset(roots[0], name="good")
    missing = make_dataset(roots[0], name="missing")
    image_file(roots[0], missing, 1).unlink()
    broken_json = make_dataset(roots[0], name="broken_json")
    path = roots[0] / "broken_json" / "train.json"
    path.write_text(path.read_text()[:-10])
    latin1 = make_dataset(roots[0], name="latin1")
    path = roots[0] / "latin1" / "train.json"
    path.write_bytes(path.read_bytes().replace(b'"name": "a"', '"name": "café"'.encode("latin-1")))
    paragraphs = failure([good, missing, broken_json, latin1], roots).split("\n\n")
    assert [p.split("'")[1] for p in paragraphs] == ["missing", "broken_json", "latin1"]
    assert all("\n" not in p for p in paragraphs)
    assert "broken_json/train.json is not valid JSON" in paragraphs[1]
    assert "latin1/train.json is not UTF-8 text" in paragraphs[2]


def test_a_passed_split_is_skipped_until_its_files_change(roots, monkeypatch):
    spec = make_dataset(roots[0], images=2)
    calls = []
    real = check.check_image
    monkeypatch.setattr(check, "check_image", lambda path, full=False: calls.append(full) or real(path, full))

    check_datasets([spec], *roots, full=True)
    assert calls == [True, True]
    [result] = check_datasets([spec], *roots)  # a header check after a full one: skipped
    assert calls == [True, True] and result.splits[0].from_stamp and "unchanged" in result.summary_lines()[0]

    annotations = roots[0] / "shapes" / "train.json"
    stat = annotations.stat()
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    check_datasets([spec], *roots)
    assert calls == [True, True, False, False]
    check_datasets([spec], *roots, full=True)  # a header stamp does not vouch for a full check
    assert calls == [True, True, False, False, True, True]


def test_a_failed_check_writes_no_stamp(roots):
    spec = make_dataset(roots[0])
    image_file(roots[0], spec, 1).unlink()
    failure([spec], roots)
    assert not (roots[1] / "checks").exists()
    noise_image(1).save(image_file(roots[0], spec, 1))
    check_datasets([spec], *roots)
    assert len(list((roots[1] / "checks").glob("*.json"))) == 1


def test_invalid_boxes_is_read_from_the_catalog_and_validated(tmp_path):
    entry = "datasets:\n  mine:\n    root: mine\n    splits: {train: {images: train, annotations: train.json}}\n"
    (tmp_path / "mine.yaml").write_text(entry + "    invalid_boxes: drop\n")
    assert Catalog.load(tmp_path).dataset("mine").invalid_boxes == "drop"
    (tmp_path / "mine.yaml").write_text(entry + "    invalid_boxes: ignore\n")
    with pytest.raises(BenchError, match=r"mine.yaml: dataset 'mine' has invalid_boxes: 'ignore'; write 'refuse'"):
        Catalog.load(tmp_path)


def test_threads_must_be_positive(roots):
    with pytest.raises(BenchError, match="at least one thread"):
        check_datasets([make_dataset(roots[0])], *roots, threads=0)
