"""Loading COCO-format datasets, and every kind of bad input the data layer must explain."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from bench.data.coco_format import load_coco
from bench.data.dataset import CaptionPrompt, DetectionDataset
from bench.errors import DataError
from tests.data_factory import coco_dict, write_dataset


def test_valid_file_loads_with_contiguous_labels(tmp_path):
    path = write_dataset(tmp_path, coco_dict(categories=(3, 7, 11)))
    coco = load_coco(path)
    assert coco.category_id_to_label == {3: 1, 7: 2, 11: 3}
    assert coco.label_to_category_id == {1: 3, 2: 7, 3: 11}
    assert all(ann["area"] == 100.0 and ann["iscrowd"] == 0 for ann in coco.data["annotations"])


def test_dataset_items_have_xyxy_boxes_and_labels(tmp_path):
    path = write_dataset(tmp_path, coco_dict(images=2, categories=(4, 9)))
    dataset = DetectionDataset(load_coco(path), tmp_path)
    image, target = dataset[1]
    assert image.size == (64, 48)
    assert target["image_id"] == 2 and target["original_size"] == (48, 64)
    assert target["boxes"].as_subclass(torch.Tensor).tolist() == [[20.0, 5.0, 30.0, 15.0], [45.0, 5.0, 55.0, 15.0]]
    assert target["labels"].tolist() == [1, 2]


def test_overrides_and_caption_prompts_shape_the_vocabulary(tmp_path):
    path = write_dataset(tmp_path, coco_dict(categories=(1, 2)))
    coco = load_coco(path).with_category_names({2: "pothole"})
    dataset = DetectionDataset(coco, tmp_path, caption_prompts={2: CaptionPrompt(prefix="there are some ", suffix=" on the road")})
    classes = dataset.prompt_classes()
    assert [(c.label, c.name, c.prefix, c.suffix) for c in classes] == [
        (1, "class1", "", ""),
        (2, "pothole", "there are some ", " on the road"),
    ]


def test_override_for_unknown_id_is_an_error(tmp_path):
    coco = load_coco(write_dataset(tmp_path, coco_dict()))
    with pytest.raises(DataError, match=r"ids \[5\].*category ids are \[1, 2\]"):
        coco.with_category_names({5: "ghost"})


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*datasets/README.md"):
        load_coco(tmp_path / "nope.json")


def test_truncated_json_names_file_and_position(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco_dict())[:-20])
    with pytest.raises(DataError, match=r"annotations.json is not valid JSON \(line 1, column \d+") as info:
        load_coco(path)
    assert "\n" not in str(info.value)


def test_non_utf8_file_is_one_paragraph_naming_it(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_bytes(json.dumps(coco_dict()).replace("class1", "caf\u00e9").encode("latin-1"))
    with pytest.raises(DataError, match=r"annotations.json is not UTF-8 text.*re-save it as UTF-8") as info:
        load_coco(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), r"top-level key\(s\) \['annotations'\] are missing"),
        (lambda d: d.update(images=[]), "no images"),
        (lambda d: d.update(categories=[]), "no categories"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] \(id 1\) lacks the key\(s\) \['bbox'\]"),
        (lambda d: d["images"][1].update(id=1), "images id 1 appears more than once"),
        (lambda d: d["annotations"][2].update(id=1), "annotations id 1 appears more than once"),
        (lambda d: d["categories"].append({"id": 2, "name": "again"}), "categories id 2 appears more than once"),
        (lambda d: d["annotations"][0].update(category_id=42), r"annotation id 1 has category id 42.*\[1, 2\]"),
        (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1 refers to image id 99"),
        (lambda d: d["images"][0].pop("file_name"), "image id 1 has neither 'file_name' nor 'coco_url'"),
        (lambda d: d.update(images={"id": 1}), "'images' is a dict, expected a list"),
    ],
)
def test_malformed_files_name_the_entry(tmp_path, mutate, message):
    data = coco_dict()
    mutate(data)
    path = write_dataset(tmp_path, data, with_images=False)
    with pytest.raises(DataError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_degenerate_boxes_are_skipped_and_kept_for_the_check_without_a_warning(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [1, 1, 0, 5]
    data["annotations"][3]["bbox"] = [1, 1, float("nan"), 5]
    data["annotations"][4]["bbox"] = [1, 1, 5]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coco = load_coco(write_dataset(tmp_path, data, with_images=False))
    assert not caught  # the data check reports them (bench.catalog_check); users never see raw warnings
    assert coco.skipped_annotations == [1, 4, 5]
    assert len(coco.data["annotations"]) == len(data["annotations"]) - 3


def test_missing_images_are_reported_before_any_read(tmp_path):
    path = write_dataset(tmp_path, coco_dict(images=4))
    (tmp_path / "0002.png").unlink()
    (tmp_path / "0004.png").unlink()
    with pytest.raises(DataError, match=r"2 of 4 images.*0002.png.*0004.png"):
        DetectionDataset(load_coco(path), tmp_path)


def test_missing_image_folder(tmp_path):
    path = write_dataset(tmp_path, coco_dict(), with_images=False)
    with pytest.raises(DataError, match=r"Image folder .*images_here \(for .*annotations.json\) does not exist"):
        DetectionDataset(load_coco(path), tmp_path / "images_here")


def test_corrupt_image_names_file_and_image_id(tmp_path):
    path = write_dataset(tmp_path, coco_dict(images=2))
    (tmp_path / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dataset = DetectionDataset(load_coco(path), tmp_path)
    dataset[0]
    with pytest.raises(DataError, match=r"0002.png \(image id 2 in .*annotations.json\) cannot be read"):
        dataset[1]


def test_lvis_style_images_resolve_through_coco_url(tmp_path):
    data = coco_dict(images=1)
    data["images"][0].pop("file_name")
    data["images"][0]["coco_url"] = "http://images.cocodataset.org/val2017/0001.png"
    write_dataset(tmp_path / "val2017", coco_dict(images=1))  # puts 0001.png under val2017/
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    image, _ = DetectionDataset(load_coco(path), tmp_path)[0]
    assert image.size == (64, 48)


def test_crowd_boxes_are_not_training_targets(tmp_path):
    data = coco_dict(images=1)
    data["annotations"][0]["iscrowd"] = 1
    _, target = DetectionDataset(load_coco(write_dataset(tmp_path, data)), tmp_path)[0]
    assert target["labels"].tolist() == [2]


def test_subset_keeps_only_chosen_images(tmp_path):
    coco = load_coco(write_dataset(tmp_path, coco_dict(images=5), with_images=False))
    sub = coco.subset([2, 4])
    assert sub.image_ids == [2, 4]
    assert {a["image_id"] for a in sub.data["annotations"]} == {2, 4}
    assert sub.category_id_to_label == coco.category_id_to_label
    with pytest.raises(DataError, match=r"\[9\]"):
        coco.subset([9])


def test_annotation_id_zero_is_renumbered_so_evaluation_counts_it(tmp_path):
    from bench.detections import ImageDetections
    from bench.eval import evaluate_coco

    data = coco_dict(images=1, categories=(1,))
    data["annotations"][0]["id"] = 0  # Roboflow exports (ODinW) start at 0
    coco = load_coco(write_dataset(tmp_path, data, with_images=False))
    assert [a["id"] for a in coco.data["annotations"]] == [1]
    perfect = ImageDetections(1, [[5.0, 5.0, 15.0, 15.0]], [0.9], [1])
    assert evaluate_coco(coco.data, [perfect])["AP"] == pytest.approx(1.0)
