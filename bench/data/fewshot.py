"""Few-shot training subsets.

Three ways to get a K-shot split, because published numbers used all three:

* GLIP's own (``seed=None``): walk images in ascending id order and keep an image whenever one of its
  categories has been seen in fewer than K kept images. Deterministic; GLIP's ``SHUFFLE_SEED`` does
  not change it (microsoft/GLIP maskrcnn_benchmark/data/datasets/modulated_coco.py, ``CocoGrounding``
  with ``few_shot``).
* Seeded: the same greedy walk over a seed-shuffled image order, counting images or instances, so
  that shot-seeds are a real axis of variation.
* Prepared files ``fewshot_train_shot{K}_seed{S}.json`` shipped with ODinW, used when present.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from bench.data.coco_format import CocoAnnotations, load_coco
from bench.errors import BenchError

COUNT_UNITS = ("image", "instance")


def sample_k_shot(annotations: CocoAnnotations, k: int, seed: int | None = None, unit: str = "image") -> list[int]:
    """Image ids of a K-shot subset, in the order they were picked.

    ``seed=None`` with ``unit="image"`` is exactly GLIP's sampler. An image is kept if any of its
    (non-crowd) categories still needs examples; every category in a kept image is credited with one
    image (``unit="image"``) or with its number of boxes (``unit="instance"``). Each category thus
    reaches K wherever the data holds K examples of it; images without annotations are never picked.
    """
    if k < 1:
        raise BenchError(f"The number of shots must be at least 1, got {k}.")
    if unit not in COUNT_UNITS:
        raise BenchError(f"Unknown few-shot counting unit {unit!r}; valid units: {', '.join(COUNT_UNITS)}.")
    order = annotations.image_ids
    if seed is not None:
        random.Random(seed).shuffle(order)
    seen: Counter[int] = Counter()
    picked = []
    for image_id in order:
        per_category = Counter(
            a["category_id"] for a in annotations.annotations_by_image[image_id] if not a["iscrowd"]
        )
        if any(seen[c] < k for c in per_category):
            picked.append(image_id)
            for category_id, count in per_category.items():
                seen[category_id] += 1 if unit == "image" else count
    return picked


def prepared_split_path(split_dir: Path, k: int, seed: int, split: str = "train") -> Path:
    """Where ODinW keeps a prepared few-shot split for ``k`` shots and ``seed``."""
    return split_dir / f"fewshot_{split}_shot{k}_seed{seed}.json"


def few_shot_subset(
    annotations: CocoAnnotations,
    k: int,
    seed: int | None,
    *,
    split_dir: Path | None = None,
    unit: str = "image",
) -> CocoAnnotations:
    """The K-shot training annotations: a prepared split file if one exists, else a sampled subset."""
    if split_dir is not None and seed is not None:
        prepared = prepared_split_path(split_dir, k, seed)
        if prepared.is_file():
            return load_coco(prepared)
    return annotations.subset(sample_k_shot(annotations, k, seed, unit))
