"""Random COCO- and LVIS-format ground truth with scored detections, for evaluator tests and benchmarks.

Two evaluation libraries can only be called interchangeable on data that exercises every branch of
the protocol: crowd regions, all three COCO area ranges, several categories with non-contiguous ids,
images with no ground truth or no detections, near misses at every IoU threshold, wrong-category
hits and, for LVIS, negative and not-exhaustively-annotated categories. This module makes such data
reproducibly from a seed, at any size (up to COCO val: 5,000 images x 100 detections), and
builds the small hand-written cases whose AP a test derives by hand.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bench.detections import ImageDetections

LVIS_FREQUENCIES = ("r", "c", "f")


def synthetic_dataset(
    *,
    images: int,
    categories: int,
    gt_per_image: float,
    dets_per_image: int,
    seed: int = 0,
    lvis: bool = False,
    exhaustive: bool = False,
    crowd_fraction: float = 0.05,
    empty_fraction: float = 0.1,
) -> tuple[dict[str, Any], list[ImageDetections]]:
    """A ground-truth dict (as the data layer hands it to evaluators) and detections for every image.

    ``gt_per_image`` is the Poisson mean of ground-truth boxes on an image; ``empty_fraction`` of the
    images get no ground truth and, independently, the same fraction get no detections. About half of
    the detections are jittered copies of a ground-truth box (IoU spread over 0.3..1, 10% with a wrong
    category), the rest are random boxes; scores are continuous, so there are no ties.

    ``lvis=True`` adds LVIS fields (category ``frequency``, per-image ``neg_category_ids`` and
    ``not_exhaustive_category_ids``) and drops crowd regions, which LVIS does not have.
    ``exhaustive=True`` makes every absent category a verified negative and no category
    not-exhaustive, the one LVIS setting in which federated evaluation reduces to COCO's.
    """
    rng = np.random.default_rng(seed)
    category_ids = 2 * np.arange(categories) + 1  # non-contiguous, like COCO's 1..90
    image_ids = np.sort(rng.choice(10 * images, size=images, replace=False)) + 1
    ground_truth: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [
            {"id": int(cid), "name": f"class{cid}", **({"frequency": LVIS_FREQUENCIES[k % 3]} if lvis else {})}
            for k, cid in enumerate(category_ids)
        ],
    }
    detections = []
    for image_id in rng.permutation(image_ids):  # list order differs from id order, as in real files
        width, height = (int(v) for v in rng.integers(320, 641, size=2))
        n_gt = 0 if rng.random() < empty_fraction else int(rng.poisson(gt_per_image))
        gt_boxes = _random_boxes(rng, n_gt, width, height)
        gt_categories = rng.choice(category_ids, size=n_gt)
        crowd = np.zeros(n_gt, bool) if lvis else rng.random(n_gt) < crowd_fraction
        for box, cid, is_crowd in zip(gt_boxes, gt_categories, crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            ground_truth["annotations"].append({
                "id": len(ground_truth["annotations"]) + 1,
                "image_id": int(image_id),
                "category_id": int(cid),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(is_crowd),
            })
        image: dict[str, Any] = {"id": int(image_id), "width": width, "height": height, "file_name": f"{image_id}.jpg"}
        if lvis:
            present = set(gt_categories.tolist())
            if exhaustive:
                image.update(_exhaustive_labels(category_ids, present))
            else:
                image.update(_sampled_labels(rng, category_ids, present))
        ground_truth["images"].append(image)
        n_det = 0 if rng.random() < empty_fraction else dets_per_image
        detections.append(_detections(rng, int(image_id), n_det, gt_boxes, gt_categories, category_ids, width, height))
    return ground_truth, detections


def _random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``[n, 4]`` xyxy boxes whose sides are log-uniform in 4..400 px, so every COCO area range occurs."""
    sides = np.exp(rng.uniform(np.log(4), np.log(400), size=(n, 2)))
    sides = np.minimum(sides, [width - 1, height - 1])
    corners = rng.uniform(0, 1, size=(n, 2)) * ([width, height] - sides)
    return np.concatenate([corners, corners + sides], axis=1)


def _detections(
    rng: np.random.Generator,
    image_id: int,
    n: int,
    gt_boxes: np.ndarray,
    gt_categories: np.ndarray,
    category_ids: np.ndarray,
    width: int,
    height: int,
) -> ImageDetections:
    boxes = _random_boxes(rng, n, width, height)
    categories = rng.choice(category_ids, size=n)
    scores = rng.random(n) * 0.6
    if len(gt_boxes):
        hits = np.flatnonzero(rng.random(n) < 0.5)
        source = rng.integers(len(gt_boxes), size=len(hits))
        sides = gt_boxes[source, 2:] - gt_boxes[source, :2]
        jitter = rng.normal(size=(len(hits), 4)) * rng.uniform(0, 0.15, size=(len(hits), 1)) * np.tile(sides, 2)
        boxes[hits] = gt_boxes[source] + jitter
        boxes[hits, 2:] = np.maximum(boxes[hits, 2:], boxes[hits, :2] + 1)
        right_category = rng.random(len(hits)) < 0.9
        categories[hits] = np.where(right_category, gt_categories[source], categories[hits])
        scores[hits] += 0.4
    return ImageDetections(image_id=image_id, boxes=boxes, scores=scores, category_ids=categories)


def _exhaustive_labels(category_ids: Sequence[int], present: set[int]) -> dict[str, list[int]]:
    """Every absent category verified absent, every present one completely annotated."""
    absent = [int(c) for c in category_ids if int(c) not in present]
    return {"neg_category_ids": absent, "not_exhaustive_category_ids": []}


def _sampled_labels(rng: np.random.Generator, category_ids: Sequence[int], present: set[int]) -> dict[str, list[int]]:
    """Federated labels: 30% of absent categories verified absent, 30% of present ones incomplete."""
    absent = _exhaustive_labels(category_ids, present)["neg_category_ids"]
    negatives = [c for c in absent if rng.random() < 0.3]
    not_exhaustive = [c for c in sorted(present) if rng.random() < 0.3]
    return {"neg_category_ids": negatives, "not_exhaustive_category_ids": not_exhaustive}


def ground_truth_from_boxes(
    boxes: Sequence[tuple[int, int, Sequence[float]]],
    *,
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    lvis: bool = False,
) -> dict[str, Any]:
    """A normalised ground-truth dict from ``(image_id, category_id, [x, y, w, h])`` triples.

    Images are 400x400. With ``lvis=True`` categories get frequencies r, c, f, r, ... in id order and
    every category absent from an image is a verified negative there (an exhaustively labelled
    image), so the federated rules only matter where a test edits the image labels.
    """
    annotations = [
        {"id": n + 1, "image_id": i, "category_id": c, "bbox": [float(v) for v in xywh],
         "area": float(xywh[2] * xywh[3]), "iscrowd": 0}
        for n, (i, c, xywh) in enumerate(boxes)
    ]
    images: list[dict[str, Any]] = [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.jpg"} for i in image_ids]
    if lvis:
        for image in images:
            present = {a["category_id"] for a in annotations if a["image_id"] == image["id"]}
            image.update(_exhaustive_labels(category_ids, present))
    categories = [
        {"id": c, "name": f"class{c}", **({"frequency": LVIS_FREQUENCIES[k % 3]} if lvis else {})}
        for k, c in enumerate(category_ids)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}
