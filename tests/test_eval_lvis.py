"""LVIS bbox AP: hand-derived values, federated rules, Fixed AP, agreement with COCO, backend parity."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest

from bench.detections import ImageDetections
from bench.errors import UnknownNameError
from bench.eval import COCO_METRICS, LVIS_BACKENDS, LVIS_METRICS, evaluate_coco, evaluate_lvis
from bench.eval.coco_eval import bbox_ground_truth, detections_to_records
from bench.eval.lvis_eval import LVISResults, _InMemoryLVIS, _NumPy2LVISEval, _lvis_notices_silenced
from bench.eval.synthetic import ground_truth_from_boxes, synthetic_dataset

BACKENDS = LVIS_BACKENDS.names()

# categories 1, 2, 3 are rare, common and frequent (ground_truth_from_boxes assigns r, c, f in id order)
A_BOX, B_BOX, C_BOX, STRAY = [10, 10, 20, 20], [60, 60, 50, 50], [100, 150, 120, 110], [300, 300, 30, 30]


def dets(image_id: int, boxes_xywh: list, scores: list, category_ids: list) -> ImageDetections:
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]).reshape(-1, 4)
    return ImageDetections(image_id, boxes, scores, category_ids)


def same(a: float, b: float, tol: float = 1e-12) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.fixture
def three_frequencies_gt() -> dict:
    """Image 1 has a small rare and a medium common object; image 2 a large frequent one."""
    return ground_truth_from_boxes(
        [(1, 1, A_BOX), (1, 2, B_BOX), (2, 3, C_BOX)], image_ids=[1, 2], category_ids=[1, 2, 3], lvis=True
    )


PERFECT = [dets(1, [A_BOX, B_BOX], [0.9, 0.8], [1, 2]), dets(2, [C_BOX], [0.7], [3])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixed_ap", [True, False])
def test_perfect_detections_score_one(three_frequencies_gt: dict, backend: str, fixed_ap: bool) -> None:
    metrics = evaluate_lvis(three_frequencies_gt, PERFECT, fixed_ap=fixed_ap, backend=backend)
    assert metrics == {name: pytest.approx(1.0, abs=1e-12) for name in LVIS_METRICS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detections", [[], [ImageDetections(2, np.zeros((0, 4)), [], [])]], ids=["none", "empty"])
def test_no_detections_score_zero(three_frequencies_gt: dict, backend: str, detections: list) -> None:
    # lvis 0.5.3's LVISResults cannot take an empty result list; the evaluator must still answer 0
    assert evaluate_lvis(three_frequencies_gt, detections, backend=backend) == {name: 0.0 for name in LVIS_METRICS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_case_matches_hand_derived_ap(backend: str) -> None:
    # 2 GT of one category; TP (IoU 1, score .9) then FP (.8): recall [1/2, 1/2], precision [1, 1/2],
    # so the recall thresholds 0.00..0.50 (51 of 101) take precision 1 and the rest 0: AP = 51/101.
    gt = ground_truth_from_boxes([(1, 3, B_BOX), (1, 3, [200, 200, 40, 40])], image_ids=[1], category_ids=[1, 2, 3],
                                 lvis=True)
    metrics = evaluate_lvis(gt, [dets(1, [B_BOX, STRAY], [0.9, 0.8], [3, 3])], backend=backend)
    for name in ("AP", "AP50", "AP75", "APm", "APf"):
        assert metrics[name] == pytest.approx(51 / 101, abs=1e-12)
    for name in ("APs", "APl", "APr", "APc"):  # no GT in that area range or frequency group
        assert math.isnan(metrics[name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("negative", "expected"), [(True, 0.75), (False, 1.0)], ids=["verified-absent", "unverified"])
def test_detections_only_count_on_verified_categories(backend: str, negative: bool, expected: float) -> None:
    # image 1 holds category 1, image 2 category 2; a stray category-2 detection on image 1 (score .9)
    # is a false positive only if category 2 was verified absent there. Then category 2 ranks FP, TP
    # against 1 GT: precision [0, 1/2] interpolates to 1/2 at every recall threshold, AP_2 = 1/2, and
    # AP = (1 + 1/2) / 2. Unverified, the detection is dropped and AP stays 1.
    gt = ground_truth_from_boxes([(1, 1, A_BOX), (2, 2, B_BOX)], image_ids=[1, 2], category_ids=[1, 2], lvis=True)
    gt["images"][0]["neg_category_ids"] = [2] if negative else []
    detections = [dets(1, [A_BOX, STRAY], [0.5, 0.9], [1, 2]), dets(2, [B_BOX], [0.5], [2])]
    assert evaluate_lvis(gt, detections, backend=backend)["AP"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("incomplete", "expected"), [(True, 1.0), (False, 5 / 6)], ids=["incomplete", "exhaustive"])
def test_unmatched_detections_are_free_on_not_exhaustive_categories(
    backend: str, incomplete: bool, expected: float
) -> None:
    # category 2 has a GT on both images; an unmatched category-2 detection on image 1 (score .9) ranks
    # FP, TP, TP: recall [0, 1/2, 1], precision [0, 1/2, 2/3] -> interpolated 2/3 everywhere, AP_2 = 2/3
    # and AP = (1 + 2/3) / 2 = 5/6, unless image 1 marks category 2 as not exhaustively annotated.
    gt = ground_truth_from_boxes([(1, 1, A_BOX), (1, 2, B_BOX), (2, 2, B_BOX)], image_ids=[1, 2], category_ids=[1, 2],
                                 lvis=True)
    gt["images"][0]["not_exhaustive_category_ids"] = [2] if incomplete else []
    detections = [dets(1, [A_BOX, B_BOX, STRAY], [0.5, 0.5, 0.9], [1, 2, 2]), dets(2, [B_BOX], [0.5], [2])]
    assert evaluate_lvis(gt, detections, backend=backend)["AP"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_ap_has_no_per_image_cap(backend: str) -> None:
    # three objects on one image, found perfectly. Capped at 2 detections per image, recall stops at
    # 2/3: thresholds 0.00..0.66 (67 of 101) take precision 1, AP = 67/101. Fixed AP keeps all three.
    boxes = [[10, 10, 40, 40], [100, 100, 40, 40], [200, 200, 40, 40]]
    gt = ground_truth_from_boxes([(1, 1, b) for b in boxes], image_ids=[1], category_ids=[1], lvis=True)
    detections = [dets(1, boxes, [0.9, 0.8, 0.7], [1, 1, 1])]
    capped = evaluate_lvis(gt, detections, fixed_ap=False, max_dets_per_image=2, backend=backend)
    fixed = evaluate_lvis(gt, detections, fixed_ap=True, max_dets_per_image=2, backend=backend)
    assert capped["AP"] == pytest.approx(67 / 101, abs=1e-12)
    assert fixed["AP"] == pytest.approx(1.0, abs=1e-12)
    # the Fixed AP budget is per class over the dataset
    assert evaluate_lvis(gt, detections, topk_per_class=2, backend=backend)["AP"] == pytest.approx(67 / 101, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_area_ground_truth_is_not_evaluated(backend: str) -> None:
    # the lvis API skips annotations with area 0 altogether, so the one found box is all there is to
    # find; faster-coco-eval on its own would count the second box as missed (AP 51/101)
    gt = ground_truth_from_boxes([(1, 1, A_BOX), (1, 1, B_BOX)], image_ids=[1], category_ids=[1], lvis=True)
    gt["annotations"][1]["area"] = 0.0
    metrics = evaluate_lvis(gt, [dets(1, [A_BOX], [0.9], [1])], backend=backend)
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12)


def test_per_image_selection_matches_lvis_own_limit() -> None:
    """Selecting the top detections ourselves gives what LVISResults(max_dets=...) gives."""
    gt, detections = synthetic_dataset(images=30, categories=6, gt_per_image=5, dets_per_image=40, seed=4, lvis=True)
    ours = evaluate_lvis(gt, detections, fixed_ap=False, max_dets_per_image=12, backend="lvis")
    lvis_gt = _InMemoryLVIS(bbox_ground_truth(gt))
    with _lvis_notices_silenced():
        evaluator = _NumPy2LVISEval(lvis_gt, LVISResults(lvis_gt, detections_to_records(gt, detections), max_dets=12),
                                    iou_type="bbox")
        evaluator.run()
    theirs = evaluator.get_results()
    assert all(same(ours[name], float(theirs[name]), 0.0) for name in LVIS_METRICS)
    assert ours["AP"] != evaluate_lvis(gt, detections, fixed_ap=False, backend="lvis")["AP"]  # the cap did bite


def test_lvis_equals_coco_where_the_protocols_coincide() -> None:
    """Standard LVIS AP is COCO AP when LVIS' extra rules are idle and COCO's caps do not bite.

    That is: every image exhaustively labelled (all absent categories verified negative, none
    not-exhaustive), no crowd regions (LVIS has none, COCO ignores matches to them), no zero-area
    boxes (LVIS drops them from the ground truth), and at most 100 detections per image, so neither
    COCO's 100 per image and category nor LVIS' 300 per image removes anything.
    """
    gt, detections = synthetic_dataset(images=50, categories=9, gt_per_image=5, dets_per_image=60, seed=5, lvis=True,
                                       exhaustive=True)
    lvis_metrics = evaluate_lvis(gt, detections, fixed_ap=False, backend="lvis")
    coco_metrics = evaluate_coco(gt, detections, backend="pycocotools")
    assert all(same(lvis_metrics[name], coco_metrics[name], 0.0) for name in COCO_METRICS)
    # once absent categories are no longer verified, LVIS stops counting their detections as false positives
    unverified = copy.deepcopy(gt)
    for image in unverified["images"]:
        image["neg_category_ids"] = []
    assert evaluate_lvis(unverified, detections, fixed_ap=False)["AP"] > coco_metrics["AP"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fixed_ap", [True, False])
def test_backends_agree_on_random_results(seed: int, fixed_ap: bool) -> None:
    """faster-coco-eval's LVIS mode is offered (and the default) only because it reproduces lvis.

    The caps are set below the data's detection counts so that both selections are exercised.
    """
    gt, detections = synthetic_dataset(images=40, categories=9, gt_per_image=5, dets_per_image=40, seed=seed, lvis=True)
    options = dict(fixed_ap=fixed_ap, topk_per_class=120, max_dets_per_image=25)
    reference = evaluate_lvis(gt, detections, backend="lvis", **options)
    faster = evaluate_lvis(gt, detections, backend="faster-coco-eval", **options)
    assert all(same(reference[name], faster[name]) for name in LVIS_METRICS), (reference, faster)
    assert 0.05 < reference["AP"] < 0.95


def test_numpy_is_not_patched(three_frequencies_gt: dict) -> None:
    import lvis.eval

    evaluate_lvis(three_frequencies_gt, PERFECT, backend="lvis")
    assert not hasattr(np, "float")  # removed in NumPy 1.24; lvis 0.5.3 still uses it
    assert lvis.eval.np is np


def test_importing_lvis_leaves_the_root_logger_unconfigured() -> None:
    code = "import logging, bench.eval.lvis_eval; assert not logging.getLogger().handlers"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_is_left_unmodified(three_frequencies_gt: dict, backend: str) -> None:
    before = copy.deepcopy(three_frequencies_gt)
    evaluate_lvis(three_frequencies_gt, PERFECT, backend=backend)
    assert three_frequencies_gt == before


def test_unknown_backend_names_the_valid_ones(three_frequencies_gt: dict) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'lvis'"):
        evaluate_lvis(three_frequencies_gt, PERFECT, backend="lvsi")
