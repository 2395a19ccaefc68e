"""Tiny trees of real suites on disk, laid out exactly as the catalog declares the real ones.

:func:`build_suite_tree` reads a suite through :meth:`bench.catalog.Catalog.load` and, for each
member, creates exactly the image folders and annotation files its catalog entry declares
(``DatasetSpec.split_paths`` for every declared split, released K-shot splits included). So the
tree follows the YAML wherever it departs from the common ``train``/``valid``/``test`` pattern: in
ODinW13 (:func:`build_odinw13_tree`, GLIP's ``odinw_35`` download layout) PascalVOC's val and test
are one file (written once), EgoHands and Vehicles validate on ``mini_val``, and Pistols keeps its
images and its three annotation files in one folder; RF100-VL's files are Roboflow exports
(``_annotations.coco.json`` beside the images, the placeholder category 0 named after the dataset
with supercategory ``none``, the real classes from id 1, annotation ids from 0), and its released
10-shot suites declare only ``train-10shot``; CD-FSOD's released K-shot files hold the first K
images of its training pool. If the YAML changes, the tree changes with it.

Each split holds a few small JPEG images (64x48, one coloured rectangle per box on a plain
background, real JPEG files with their end marker) and a COCO-format annotation file: ``images``
(id, file_name, width, height), ``annotations`` (id, image_id, category_id, an xywh bbox inside the
image, area, iscrowd 0) and ``categories`` named as the catalog's ``category_names`` (datasets that
declare none, RF100-VL's, get the :data:`INVENTED_CLASSES`). Every category appears
in the training split (up to four boxes an image, so even PascalVOC's 20 classes fit in six
images), and the training split has more images than val and test, so a held-out validation (a
fifth of the training images, :mod:`bench.data.holdout`) is possible.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench.catalog import Catalog, DatasetSpec

SUITE = "odinw13"
WIDTH, HEIGHT = 64, 48
INVENTED_CLASSES = ("widget", "gadget")
MAX_BOXES_PER_IMAGE = 4  # one per quadrant, so boxes never overlap
CELL_W, CELL_H = WIDTH // 2, HEIGHT // 2


def build_odinw13_tree(root: Path, images_per_split: int = 3, seed: int = 0, train_images: int | None = None) -> Path:
    """Write a small ODinW13 tree under ``root`` (the folder to pass as ``--data-root``) and return it."""
    return build_suite_tree(root, SUITE, images_per_split, seed, train_images)


def build_suite_tree(root: Path, suite: str, images_per_split: int = 3, seed: int = 0, train_images: int | None = None,
                     datasets: list[str] | None = None) -> Path:
    """Write a small tree of ``suite`` (only ``datasets`` of it, when given) under ``root`` (the folder
    to pass as ``--data-root``) and return it.

    Val and test get ``images_per_split`` images each, training splits ``train_images`` (default: twice
    as many). The same ``seed`` gives the same files, byte for byte.
    """
    root = Path(root)
    catalog = Catalog.load()
    train_images = 2 * images_per_split if train_images is None else train_images
    for name in datasets or catalog.suite(suite).datasets:
        spec = catalog.dataset(name)
        written: set[Path] = set()
        drawn_from_pool = set(spec.released_shots.values()) if "train" in spec.splits else set()
        for split in spec.splits:
            image_dir, annotation_file = spec.split_paths(split, root)
            if annotation_file.resolve() in written or split in drawn_from_pool:  # PascalVOC: val and test are one file
                continue
            count = train_images if split.startswith("train") else images_per_split
            rng = random.Random(zlib.crc32(f"{seed}/{name}/{split}".encode()))
            _write_split(spec, split, image_dir, annotation_file, count, rng)
            written.add(annotation_file.resolve())
        for shots, split in spec.released_shots.items():
            if split in drawn_from_pool:  # CD-FSOD: the first K images of the training pool
                pool = json.loads(spec.split_paths("train", root)[1].read_text())
                kept = {image["id"] for image in pool["images"][:shots]}
                released = {**pool, "images": [i for i in pool["images"] if i["id"] in kept],
                            "annotations": [a for a in pool["annotations"] if a["image_id"] in kept]}
                spec.split_paths(split, root)[1].write_text(json.dumps(released))
    return root


def class_names(spec: DatasetSpec) -> dict[int, str]:
    """The tree's classes of ``spec`` by category id as written in the file: the catalog's names, or
    invented ones; a Roboflow export numbers its real classes from 1 (0 is its placeholder)."""
    if spec.category_names:
        return dict(spec.category_names)
    return dict(enumerate(INVENTED_CLASSES, start=1))


def _write_split(spec: DatasetSpec, split: str, image_dir: Path, annotation_file: Path, count: int,
                 rng: random.Random) -> None:
    names = class_names(spec)
    category_ids = sorted(names)
    # Enough boxes per image for every class to appear in the split (at most one per quadrant).
    per_image = min(MAX_BOXES_PER_IMAGE, max(1, -(-len(category_ids) // max(count, 1))))
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    next_category = 0
    for image_id in range(1, count + 1):
        # The split in the file name keeps Pistols' splits apart in their shared folder.
        file_name = f"{split}_{image_id:04d}.jpg"
        background = tuple(rng.randint(0, 80) for _ in range(3))
        picture = Image.new("RGB", (WIDTH, HEIGHT), background)
        draw = ImageDraw.Draw(picture)
        quadrants = rng.sample(range(MAX_BOXES_PER_IMAGE), per_image)
        for quadrant in quadrants:
            category_id = category_ids[next_category % len(category_ids)]
            next_category += 1
            w, h = rng.randint(12, CELL_W - 4), rng.randint(10, CELL_H - 4)
            x = (quadrant % 2) * CELL_W + rng.randint(1, CELL_W - w - 1)
            y = (quadrant // 2) * CELL_H + rng.randint(1, CELL_H - h - 1)
            colour = tuple(rng.randint(120, 255) for _ in range(3))
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
            annotations.append({
                "id": len(annotations) + (0 if spec.roboflow_placeholder else 1), "image_id": image_id, "category_id": category_id,
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0,
            })
        picture.save(image_dir / file_name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT})
    if spec.roboflow_placeholder:
        placeholder = spec.root.rsplit("/", 1)[-1]
        categories = [{"id": 0, "name": placeholder, "supercategory": "none"}]
        categories += [{"id": cid, "name": names[cid], "supercategory": placeholder} for cid in category_ids]
    else:
        categories = [{"id": cid, "name": names[cid], "supercategory": "none"} for cid in category_ids]
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
