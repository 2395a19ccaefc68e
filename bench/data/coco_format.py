"""Reading and validating COCO-format detection annotations.

Every dataset the benchmark touches (COCO, LVIS, ODinW, the synthetic shapes world) is a COCO-format
JSON file next to its images. This module turns such a file into a validated, normalised
:class:`CocoAnnotations` and turns every way a file can be wrong into one :class:`DataError` that
names the file and the offending entry, so that a bad file fails before any training starts rather
than in the middle of an evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bench.errors import DataError

REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
REQUIRED_IMAGE_KEYS = ("id",)
REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
REQUIRED_CATEGORY_KEYS = ("id", "name")

HOW_TO_FIX = "See datasets/README.md for the expected layout of each dataset."


@dataclass
class CocoAnnotations:
    """A validated COCO-format annotation file.

    ``data`` is the normalised JSON dict (every annotation has ``area`` and ``iscrowd``; degenerate
    boxes removed, their ids kept in ``skipped_annotations`` for the data check to report or count,
    :mod:`bench.catalog_check`), ready for pycocotools/lvis. Categories are numbered with contiguous labels 1..N in
    ascending category-id order, as GLIP does (``json_category_id_to_contiguous_id`` in microsoft/GLIP
    maskrcnn_benchmark/data/datasets/coco.py), because models score labels
    while evaluators and result files speak category ids.
    """

    path: Path
    data: dict[str, Any]
    skipped_annotations: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images: dict[int, dict[str, Any]] = {img["id"]: img for img in self.data["images"]}
        self.categories: dict[int, dict[str, Any]] = {
            cat["id"]: cat for cat in sorted(self.data["categories"], key=lambda c: c["id"])
        }
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(self.categories)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        self.annotations_by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in self.images}
        for ann in self.data["annotations"]:
            self.annotations_by_image[ann["image_id"]].append(ann)

    @property
    def image_ids(self) -> list[int]:
        """Image ids in ascending order (the order GLIP's datasets iterate in)."""
        return sorted(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def category_names(self) -> dict[int, str]:
        return {cid: cat["name"] for cid, cat in self.categories.items()}

    def with_category_names(self, names: Mapping[int, str]) -> "CocoAnnotations":
        """A copy whose categories carry override names (GLIP's ``OVERRIDE_CATEGORY``).

        Ids must exist in the file: an override for a missing id means the catalog and the data
        disagree, which would silently shift every class name.
        """
        unknown = sorted(set(names) - set(self.categories))
        if unknown:
            raise DataError(
                f"Category-name overrides refer to ids {unknown} that {self.path} does not define "
                f"(its category ids are {sorted(self.categories)}). Fix the dataset's catalog entry "
                f"(category_names) or use the annotation file it was written for. {HOW_TO_FIX}"
            )
        data = dict(self.data)
        data["categories"] = [
            {**cat, "name": names.get(cat["id"], cat["name"])} for cat in self.data["categories"]
        ]
        return CocoAnnotations(self.path, data, list(self.skipped_annotations))

    def subset(self, image_ids: list[int]) -> "CocoAnnotations":
        """The same file restricted to ``image_ids`` (few-shot splits); categories are kept whole."""
        keep = set(image_ids)
        missing = keep - set(self.images)
        if missing:
            raise DataError(f"Image ids {sorted(missing)[:5]} are not in {self.path}.")
        data = dict(self.data)
        data["images"] = [img for img in self.data["images"] if img["id"] in keep]
        data["annotations"] = [ann for ann in self.data["annotations"] if ann["image_id"] in keep]
        return CocoAnnotations(self.path, data, list(self.skipped_annotations))


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"Invalid annotation file {path}: {what}. {HOW_TO_FIX}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"Annotation file {path} does not exist. Check --data-root and the dataset's catalog entry; "
            f"{HOW_TO_FIX}"
        )
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(
            f"Annotation file {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}). "
            f"The file is probably truncated or was not fully downloaded; obtain it again. {HOW_TO_FIX}"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(
            f"Annotation file {path} is not UTF-8 text ({err}). JSON files must be UTF-8: re-save it as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8) or obtain it again. {HOW_TO_FIX}"
        ) from None
    except OSError as err:
        raise DataError(f"Annotation file {path} cannot be read ({err}); check its permissions. {HOW_TO_FIX}") from None


def _check_entries(path: Path, entries: list, kind: str, required: tuple[str, ...]) -> None:
    seen: set = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _fail(path, f"{kind}[{index}] is a {type(entry).__name__}, expected an object")
        missing = [key for key in required if key not in entry]
        if missing:
            ident = f" (id {entry['id']})" if "id" in entry else ""
            raise _fail(path, f"{kind}[{index}]{ident} lacks the key(s) {missing}")
        if entry["id"] in seen:
            raise _fail(path, f"{kind} id {entry['id']!r} appears more than once; ids must be unique")
        seen.add(entry["id"])


def _is_degenerate(bbox: Any) -> bool:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return True
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return True
    return not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0


def validate_coco(raw: Any, path: Path) -> CocoAnnotations:
    """Check and normalise an already parsed COCO-format dict (see :func:`load_coco`)."""
    if raw is None:  # what rf100vl < 1.1.2 writes when it cleans a file a second time
        raise _fail(path, "it holds only null: RF100-VL's package before version 1.1.2 overwrites an annotation file it "
                          "already cleaned with null. Download the dataset again with rf100vl 1.1.2 or later")
    if not isinstance(raw, dict):
        raise _fail(path, f"the top level is a {type(raw).__name__}, expected an object")
    missing = [key for key in REQUIRED_TOP_LEVEL if key not in raw]
    if missing:
        raise _fail(path, f"the top-level key(s) {missing} are missing (found {sorted(raw)})")
    for key in REQUIRED_TOP_LEVEL:
        if not isinstance(raw[key], list):
            raise _fail(path, f"'{key}' is a {type(raw[key]).__name__}, expected a list")
    if not raw["images"]:
        raise _fail(path, "it lists no images (empty dataset)")
    if not raw["categories"]:
        raise _fail(path, "it lists no categories")

    _check_entries(path, raw["images"], "images", REQUIRED_IMAGE_KEYS)
    _check_entries(path, raw["categories"], "categories", REQUIRED_CATEGORY_KEYS)
    _check_entries(path, raw["annotations"], "annotations", REQUIRED_ANNOTATION_KEYS)
    for img in raw["images"]:
        if "file_name" not in img and "coco_url" not in img:
            raise _fail(path, f"image id {img['id']} has neither 'file_name' nor 'coco_url'")

    image_ids = {img["id"] for img in raw["images"]}
    category_ids = {cat["id"] for cat in raw["categories"]}
    annotations = []
    skipped: list[int] = []
    for ann in raw["annotations"]:
        if ann["image_id"] not in image_ids:
            raise _fail(path, f"annotation id {ann['id']} refers to image id {ann['image_id']!r}, which is not listed")
        if ann["category_id"] not in category_ids:
            raise _fail(
                path,
                f"annotation id {ann['id']} has category id {ann['category_id']!r}, which is not among the "
                f"categories {sorted(category_ids)}",
            )
        if _is_degenerate(ann["bbox"]):
            skipped.append(ann["id"])
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        annotations.append({**ann, "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)), "iscrowd": int(ann.get("iscrowd", 0))})
    data = {**raw, "annotations": _without_zero_ids(annotations)}
    return CocoAnnotations(path, data, skipped)


def _without_zero_ids(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Renumber annotations 1..N when one of them has id 0.

    pycocotools (and the evaluators built like it) record "matched to annotation id" per detection
    and read 0 as "unmatched", so a ground-truth box with id 0 turns its true positive into a false
    positive. Roboflow exports (ODinW) number annotations from 0. Annotation ids mean nothing
    else to the benchmark, so they are renumbered rather than refused.
    """
    if not any(ann["id"] == 0 for ann in annotations):
        return annotations
    return [{**ann, "id": number} for number, ann in enumerate(annotations, start=1)]


def load_coco(path: str | Path) -> CocoAnnotations:
    """Load and validate a COCO-format annotation file.

    Raises :class:`DataError` for a missing or unparsable file, missing keys, duplicate ids,
    annotations that refer to unknown images or categories, and datasets without images or
    categories. Degenerate boxes are left out silently, their ids kept in ``skipped_annotations``:
    the data check (:mod:`bench.catalog_check`) refuses them or counts them, as the catalog says, so no
    raw Python warning ever reaches the user.
    """
    path = Path(path)
    return validate_coco(_read_json(path), path)
