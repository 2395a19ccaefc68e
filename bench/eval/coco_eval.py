"""COCO bbox AP (AP, AP50, AP75, APs, APm, APl) through pycocotools or faster-coco-eval.

COCO, ODinW and every COCO-format dataset are scored here. The evaluation libraries are behind the
"evaluator backend" registry; both implement the same protocol (101-point interpolated precision,
IoU 0.50:0.05:0.95, at most 100 detections per image and category), and the test suite checks that
they agree to 1e-12 on randomised data with crowds, all area ranges and empty images (observed:
within 1e-16; pycocotools' epsilon in the precision denominator makes a lone true positive
0.9999999999999998 instead of 1). faster-coco-eval is the default because its matching and
accumulation run in C++: 3-8x faster on COCO val (tests/benchmarks/test_eval_speed.py).

This module also holds what the LVIS evaluator shares with it: detections as result records in the
COCO results format, the check that they belong to the ground truth, and silencing the libraries.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.detections import ImageDetections
from bench.errors import DataError
from bench.registry import Registry

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# A backend takes the bbox-only ground truth and the result records and returns the six
# summary numbers in COCO_METRICS order, with the library's -1 for "no ground truth in range".
CocoBackend = Callable[[dict[str, Any], list[dict[str, Any]]], Sequence[float]]
COCO_BACKENDS: Registry[CocoBackend] = Registry("evaluator backend")
DEFAULT_COCO_BACKEND = "faster-coco-eval"


def evaluate_coco(
    ground_truth: dict[str, Any],
    detections: Sequence[ImageDetections],
    *,
    backend: str = DEFAULT_COCO_BACKEND,
    legacy_plus_one: bool = False,
) -> dict[str, float]:
    """COCO bbox metrics of ``detections`` against ``ground_truth``, as fractions in 0..1.

    ``ground_truth`` is a validated COCO-format dict (it is not modified). A metric whose area range
    holds no ground truth (e.g. APs on a dataset without small objects) is NaN, not pycocotools' -1,
    so that it cannot be averaged in by accident. ``legacy_plus_one`` converts boxes with
    ``w = x2 - x1 + 1`` as GLIP's COCO evaluator does (``prepare_for_coco_detection`` in microsoft/GLIP
    maskrcnn_benchmark/data/datasets/evaluation/coco/coco_eval.py); pass True only for
    parity runs against published GLIP numbers.
    """
    evaluate = COCO_BACKENDS.get(backend)
    records = detections_to_records(ground_truth, detections, legacy_plus_one=legacy_plus_one)
    with library_output_logged():
        stats = evaluate(bbox_ground_truth(ground_truth), records)
    return {name: nan_if_missing(value) for name, value in zip(COCO_METRICS, stats)}


def detections_to_records(
    ground_truth: dict[str, Any], detections: Sequence[ImageDetections], *, legacy_plus_one: bool = False
) -> list[dict[str, Any]]:
    """Detections as COCO result records (``bbox`` in xywh), after checking they belong to ``ground_truth``.

    The libraries would assert on unknown image ids and silently ignore unknown category ids; both
    mean that labels were mapped back to the wrong dataset, so they are reported as a DataError.
    """
    detections = [d for d in detections if len(d)]
    if not detections:
        return []
    image_ids = np.concatenate([np.full(len(d), d.image_id, dtype=np.int64) for d in detections])
    category_ids = np.concatenate([d.category_ids for d in detections])
    _check_known(image_ids, {img["id"] for img in ground_truth["images"]}, "image")
    _check_known(category_ids, {cat["id"] for cat in ground_truth["categories"]}, "category")
    xywh = np.concatenate([d.boxes for d in detections])
    xywh[:, 2:] -= xywh[:, :2]
    if legacy_plus_one:
        xywh[:, 2:] += 1.0
    scores = np.concatenate([d.scores for d in detections])
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(image_ids.tolist(), category_ids.tolist(), xywh.tolist(), scores.tolist())
    ]


def _check_known(ids: np.ndarray, known: set[int], kind: str) -> None:
    unknown = sorted(set(np.unique(ids).tolist()) - known)
    if unknown:
        raise DataError(
            f"Detections refer to {kind} ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that the "
            f"ground truth does not contain. Detections must carry the evaluated dataset's own {kind} ids; "
            f"check that the model was run on this dataset's split and that labels were mapped back with "
            f"this dataset's label_to_category_id."
        )


def bbox_ground_truth(ground_truth: dict[str, Any]) -> dict[str, Any]:
    """A private copy of the ground truth with fresh annotation dicts and no segmentations.

    The libraries write bookkeeping keys (``ignore``, ``_ignore``) into the annotations they are given;
    copying keeps the caller's dict untouched, and dropping polygons (unused by bbox evaluation)
    keeps the copies that lvis makes cheap.
    """
    return {
        **ground_truth,
        "annotations": [{k: v for k, v in ann.items() if k != "segmentation"} for ann in ground_truth["annotations"]],
    }


def nan_if_missing(value: float) -> float:
    """The libraries' -1 ("no ground truth in this range or group") as NaN."""
    return math.nan if value == -1 else float(value)


@contextlib.contextmanager
def library_output_logged() -> Iterator[None]:
    """Capture what the evaluation libraries print and log it at DEBUG level instead.

    pycocotools prints progress and its summary table on stdout; a benchmark cell evaluates many
    times, so the output is kept out of the console but stays retrievable with DEBUG logging.
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue():
            logger.debug("evaluation library output:\n%s", buffer.getvalue().rstrip())


@COCO_BACKENDS.register("pycocotools", "the reference COCO API (pure Python matching)")
def _evaluate_pycocotools(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> Sequence[float]:
    evaluator = pycocotools_evaluator(ground_truth, records)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[: len(COCO_METRICS)]


def pycocotools_evaluator(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> COCOeval:
    """A pycocotools bbox ``COCOeval`` over ``records``, not yet run.

    pycocotools 2.0.11's ``loadRes`` indexes ``results[0]``, so an empty result list gets an empty
    result set built directly instead.
    """
    coco_gt = COCO()
    coco_gt.dataset = ground_truth
    coco_gt.createIndex()
    if records:
        coco_dt = coco_gt.loadRes(records)
    else:
        coco_dt = COCO()
        coco_dt.dataset = {**ground_truth, "annotations": []}
        coco_dt.createIndex()
    return COCOeval(coco_gt, coco_dt, iouType="bbox")


@COCO_BACKENDS.register("faster-coco-eval", "pycocotools' protocol with C++ matching and accumulation (default)")
def _evaluate_faster_coco_eval(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> Sequence[float]:
    coco_gt = FasterCOCO(ground_truth, print_function=logger.debug)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(records), iouType="bbox", print_function=logger.debug)
    evaluator.run()
    return evaluator.stats[: len(COCO_METRICS)]
