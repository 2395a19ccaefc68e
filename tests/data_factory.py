"""Small hand-written COCO-format datasets for data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image


def coco_dict(images: int = 3, categories: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """``images`` 64x48 images, one 10x10 box of each category on every image."""
    data: dict[str, Any] = {
        "images": [{"id": i, "file_name": f"{i:04d}.png", "width": 64, "height": 48} for i in range(1, images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
        "annotations": [],
    }
    for img in data["images"]:
        for c in categories:
            data["annotations"].append(
                {"id": len(data["annotations"]) + 1, "image_id": img["id"], "category_id": c, "bbox": [5.0 * c, 5.0, 10.0, 10.0], "iscrowd": 0}
            )
    return data


def write_dataset(root: Path, data: dict[str, Any], *, with_images: bool = True) -> Path:
    """Write ``data`` as ``root/annotations.json`` (and blank PNGs for its images); return the JSON path."""
    root.mkdir(parents=True, exist_ok=True)
    if with_images:
        for img in data["images"]:
            Image.new("RGB", (img["width"], img["height"]), (0, 0, 0)).save(root / img["file_name"])
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path
