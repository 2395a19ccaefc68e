"""Reading Roboflow COCO exports (RF100-VL, RF20-VL) as their official loader cleans them, without writing.

A Roboflow COCO export puts a placeholder category first: id 0, named after the dataset, with
supercategory ``"none"``; every real class names it as its supercategory, and it owns no boxes.
RF100-VL's package (roboflow/rf100-vl, ``rf100vl/dataset.py``, ``get_clean_ann_data``) drops it and
shifts every category id, and every box's ``category_id``, down by one, so classes are numbered
from 0, which is also what its challenge's submissions use. That package rewrites the annotation
file in place, and some of its versions write ``null`` over a file that was already cleaned. Here
the file is never written: the cleaning happens on the loaded copy, and a file that the package
already cleaned (no placeholder left) reads as it is, so raw and cleaned downloads give the same
annotations.
"""

from __future__ import annotations

from bench.data.coco_format import HOW_TO_FIX, CocoAnnotations
from bench.errors import DataError

PLACEHOLDER_ID = 0
PLACEHOLDER_SUPERCATEGORY = "none"


def without_roboflow_placeholder(annotations: CocoAnnotations) -> CocoAnnotations:
    """``annotations`` with the export's placeholder category dropped and ids shifted down by one;
    unchanged when there is no placeholder (a file the official package already cleaned)."""
    placeholder = annotations.categories.get(PLACEHOLDER_ID)
    if placeholder is None or placeholder.get("supercategory") != PLACEHOLDER_SUPERCATEGORY:
        return annotations
    owned = [ann["id"] for ann in annotations.data["annotations"] if ann["category_id"] == PLACEHOLDER_ID]
    if owned:
        raise DataError(
            f"{annotations.path}: category 0 ({placeholder['name']!r}, supercategory 'none') looks like a Roboflow export's "
            f"placeholder but owns {len(owned)} box(es) (annotation ids {owned[:5]}), so dropping it would lose them. Set "
            f"roboflow_placeholder: false in the dataset's catalog entry if category 0 is a real class. {HOW_TO_FIX}"
        )
    data = dict(annotations.data)
    data["categories"] = [{**cat, "id": cat["id"] - 1} for cat in annotations.data["categories"] if cat["id"] != PLACEHOLDER_ID]
    data["annotations"] = [{**ann, "category_id": ann["category_id"] - 1} for ann in annotations.data["annotations"]]
    return CocoAnnotations(annotations.path, data, list(annotations.skipped_annotations))
