"""LVIS bbox AP, by default "Fixed AP" (Dave et al. 2021) as MDETR and GLIP report it.

LVIS is federated: an image is only judged on the categories verified present or absent on it
(``neg_category_ids``), and unmatched detections of categories marked ``not_exhaustive_category_ids``
are not counted as false positives. Standard LVIS AP keeps the 300 highest-scoring detections per
image, which lets a detector trade rare-class recall for frequent-class detections; Fixed AP instead
keeps the ``topk_per_class`` best detections of each category over the whole dataset and has no
per-image cap (GLIP: ``LvisEvaluatorFixedAP`` in microsoft/GLIP
maskrcnn_benchmark/data/datasets/evaluation/lvis/lvis_eval.py). The selection happens here,
once, for every backend; a backend only scores the records it is given.

Backends: the reference ``lvis`` package and faster-coco-eval's LVIS mode, which the tests show to
agree to 1e-12 on randomised federated data (observed: within 1e-16) and which is about 5x faster,
hence the default.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from bench.detections import ImageDetections
from bench.eval.coco_eval import bbox_ground_truth, detections_to_records, library_output_logged, nan_if_missing
from bench.registry import Registry

logger = logging.getLogger(__name__)

# lvis/__init__.py calls logging.basicConfig() when imported. That installs a handler on the root
# logger and so turns the harness's (or the user's) own later basicConfig() into a silent no-op. A
# handler present during the import makes the library's call do nothing.
_import_guard = logging.NullHandler()
logging.getLogger().addHandler(_import_guard)
try:
    import lvis.eval
    from lvis import LVIS, LVISEval, LVISResults
finally:
    logging.getLogger().removeHandler(_import_guard)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")

# A backend takes the bbox-only ground truth and the already selected result records and returns
# the metrics named in LVIS_METRICS, with the library's -1 for "no ground truth in range or group".
LvisBackend = Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, float]]
LVIS_BACKENDS: Registry[LvisBackend] = Registry("LVIS evaluator backend")
DEFAULT_LVIS_BACKEND = "faster-coco-eval"


def evaluate_lvis(
    ground_truth: dict[str, Any],
    detections: Sequence[ImageDetections],
    *,
    fixed_ap: bool = True,
    topk_per_class: int = 10000,
    max_dets_per_image: int = 300,
    backend: str = DEFAULT_LVIS_BACKEND,
) -> dict[str, float]:
    """LVIS bbox metrics (AP, AP50, AP75, APs, APm, APl, APr, APc, APf) as fractions in 0..1.

    ``fixed_ap=True`` keeps the ``topk_per_class`` best detections per category over the dataset
    (``max_dets_per_image`` is then unused); ``fixed_ap=False`` is standard LVIS AP with at most
    ``max_dets_per_image`` detections per image. Boxes are converted to xywh without GLIP's COCO "+1".
    A metric without ground truth in its area range or frequency group is NaN.
    """
    evaluate = LVIS_BACKENDS.get(backend)
    records = detections_to_records(ground_truth, detections)
    if fixed_ap:
        records = keep_top_scoring(records, "category_id", topk_per_class)
    else:
        records = keep_top_scoring(records, "image_id", max_dets_per_image)
    lvis_ground_truth = bbox_ground_truth(ground_truth)
    # The LVIS API only ever evaluates annotations of positive area (LVIS.get_ann_ids); faster-coco-eval
    # would keep the others, so the rule is applied here, for every backend.
    lvis_ground_truth["annotations"] = [ann for ann in lvis_ground_truth["annotations"] if ann["area"] > 0]
    with library_output_logged():
        results = evaluate(lvis_ground_truth, records)
    return {name: nan_if_missing(results[name]) for name in LVIS_METRICS}


def keep_top_scoring(records: list[dict[str, Any]], group_key: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` highest-scoring records of each ``group_key`` value, in their original order.

    Ties keep the earlier record, as the stable sort in lvis' own per-image limit does.
    """
    if not records:
        return records
    groups = np.fromiter((r[group_key] for r in records), dtype=np.int64, count=len(records))
    scores = np.fromiter((r["score"] for r in records), dtype=np.float64, count=len(records))
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order], kind="stable")]  # by group, then score, then position
    sorted_groups = groups[order]
    group_start = np.searchsorted(sorted_groups, sorted_groups, side="left")
    keep = np.zeros(len(records), dtype=bool)
    keep[order] = np.arange(len(records)) - group_start < k
    return [r for r, kept in zip(records, keep) if kept]


@LVIS_BACKENDS.register("lvis", "the reference LVIS API (pure Python matching)")
def _evaluate_lvis_api(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    lvis_gt = _InMemoryLVIS(ground_truth)
    evaluator = _NumPy2LVISEval(lvis_gt, _uncapped_results(ground_truth, records), iou_type="bbox")
    with _lvis_notices_silenced():
        evaluator.run()
    return dict(evaluator.get_results())


@LVIS_BACKENDS.register("faster-coco-eval", "faster-coco-eval's LVIS mode: the same protocol in C++ (default)")
def _evaluate_faster_coco_eval(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    coco_gt = FasterCOCO(ground_truth, print_function=logger.debug)
    evaluator = COCOeval_faster(
        coco_gt, coco_gt.loadRes(records), iouType="bbox", lvis_style=True, print_function=logger.debug
    )
    # Its maxDets caps detections per image *and category*; the LVIS protocol has no such cap (the
    # selection above already applied the LVIS one), so make it larger than any group can be.
    evaluator.params.maxDets = [max(len(records), 1)]
    evaluator.run()
    stats = evaluator.stats_as_dict
    return {metric: stats[_FASTER_COCO_EVAL_NAMES.get(metric, metric)] for metric in LVIS_METRICS}


_FASTER_COCO_EVAL_NAMES = {
    "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium", "APl": "AP_large"
}


class _InMemoryLVIS(LVIS):
    """An ``LVIS`` built from an annotation dict: lvis 0.5.3's constructor only opens a file path."""

    def _load_json(self, dataset: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        return dataset


def _uncapped_results(ground_truth: dict[str, Any], records: list[dict[str, Any]]) -> LVISResults:
    """``LVISResults`` of ``records`` without lvis' own per-image limit (the caller selected already).

    ``LVISResults`` deep-copies the ground truth it is given but only keeps its images and categories,
    so it gets a copy without annotations. lvis 0.5.3 indexes ``results[0]``, so an empty list gets an
    empty result set built the way the constructor would.
    """
    images_only = _InMemoryLVIS({**ground_truth, "annotations": []})
    if records:
        with _lvis_notices_silenced():
            return LVISResults(images_only, records, max_dets=-1)
    empty = LVISResults.__new__(LVISResults)
    empty.logger = logging.getLogger(LVISResults.__module__)
    empty.dataset = images_only.dataset
    empty._create_index()
    return empty


def _with_float_alias(method: Callable) -> Callable:
    """``method`` executed with a ``np`` global that also has the ``np.float`` alias.

    lvis 0.5.3's ``LVISEval.accumulate`` calls ``astype(dtype=np.float)``; the alias was removed in
    NumPy 1.24, so on NumPy 2 it raises AttributeError (the only NumPy 2 breakage in the package:
    ``evaluate`` and ``summarize`` run unchanged). Instead of setting ``numpy.float`` for everyone, even
    temporarily (visible to other threads and to user code), the method's code is re-bound to a copy
    of its module globals in which ``np`` is a thin namespace adding ``float`` (the builtin, which is
    what the alias meant) in front of the real numpy. Nothing outside this one method sees it.
    """
    numpy_with_alias = types.ModuleType("numpy_with_float_alias")
    numpy_with_alias.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    numpy_with_alias.float = float  # type: ignore[attr-defined]
    rebound = types.FunctionType(
        method.__code__, {**vars(lvis.eval), "np": numpy_with_alias}, method.__name__, method.__defaults__,
        method.__closure__,
    )
    return functools.update_wrapper(rebound, method)


class _NumPy2LVISEval(LVISEval):
    """``LVISEval`` whose ``accumulate`` runs on NumPy 2 (see :func:`_with_float_alias`)."""

    accumulate = _with_float_alias(LVISEval.accumulate)


@contextlib.contextmanager
def _lvis_notices_silenced() -> Iterator[None]:
    """Silence lvis' per-call notices: a WARNING that results are assumed well-formed (they are ours)
    and the DeprecationWarning its use of ``Logger.warn`` triggers."""
    lvis_logger = logging.getLogger("lvis")
    level = lvis_logger.level
    lvis_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lvis\.")
            yield
    finally:
        lvis_logger.setLevel(level)
