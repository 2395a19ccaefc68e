"""COCO bbox AP: hand-derived values, GLIP's "+1" box quirk, errors, and backend parity."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest

from bench.detections import ImageDetections
from bench.errors import DataError, UnknownNameError
from bench.eval import COCO_BACKENDS, COCO_METRICS, DEFAULT_COCO_BACKEND, evaluate_coco
from bench.eval.coco_eval import detections_to_records
from bench.eval.synthetic import ground_truth_from_boxes, synthetic_dataset

BACKENDS = COCO_BACKENDS.names()

# one box per COCO area range: small (< 32^2), medium, large (> 96^2)
SMALL, MEDIUM, LARGE = [10, 10, 20, 20], [50, 50, 50, 50], [100, 150, 120, 110]


def xyxy(xywh: list[float]) -> list[float]:
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def dets(image_id: int, boxes_xywh: list[list[float]], scores: list[float], category_ids: list[int]) -> ImageDetections:
    return ImageDetections(image_id, np.array([xyxy(b) for b in boxes_xywh]).reshape(-1, 4), scores, category_ids)


def same(a: float, b: float, tol: float = 1e-12) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.fixture
def three_sizes_gt() -> dict:
    """Two images, two categories (ids 3 and 7), every area range present."""
    return ground_truth_from_boxes(
        [(1, 3, SMALL), (1, 7, MEDIUM), (2, 3, LARGE), (2, 7, SMALL)], image_ids=[1, 2], category_ids=[3, 7]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_one(three_sizes_gt: dict, backend: str) -> None:
    detections = [
        dets(1, [SMALL, MEDIUM], [0.9, 0.8], [3, 7]),
        dets(2, [LARGE, SMALL], [0.7, 0.6], [3, 7]),
    ]
    metrics = evaluate_coco(three_sizes_gt, detections, backend=backend)
    # approx: pycocotools' precision 1/(1 + np.spacing(1)) is 1 - 2.2e-16 for a lone true positive
    assert metrics == {name: pytest.approx(1.0, abs=1e-12) for name in COCO_METRICS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detections", [[], [ImageDetections(1, np.zeros((0, 4)), [], [])]], ids=["none", "empty"])
def test_no_detections_score_zero(three_sizes_gt: dict, backend: str, detections: list) -> None:
    # pycocotools' loadRes cannot take an empty result list; the evaluator must still answer 0
    assert evaluate_coco(three_sizes_gt, detections, backend=backend) == {name: 0.0 for name in COCO_METRICS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # TP (IoU 1) ranked first, FP second; 2 GT. Cumulative recall [1/2, 1/2], precision [1, 1/2];
        # the 101 recall thresholds 0.00..0.50 (51 of them) take precision 1, those above 0.5 are
        # never reached and count 0: AP = 51/101 at every IoU threshold.
        ((0.9, 0.8), 51 / 101),
        # FP ranked first: recall [0, 1/2], precision [0, 1/2], interpolated (max to the right)
        # [1/2, 1/2]; thresholds 0.00..0.50 take 1/2: AP = 25.5/101.
        ((0.8, 0.9), 25.5 / 101),
    ],
    ids=["tp-first", "fp-first"],
)
def test_partial_case_matches_hand_derived_ap(backend: str, scores: tuple, expected: float) -> None:
    gt = ground_truth_from_boxes([(1, 1, MEDIUM), (1, 1, [200, 200, 40, 40])], image_ids=[1], category_ids=[1])
    far_away = [300, 20, 50, 50]  # overlaps neither GT box
    metrics = evaluate_coco(gt, [dets(1, [MEDIUM, far_away], list(scores), [1, 1])], backend=backend)
    for name in ("AP", "AP50", "AP75", "APm"):  # both GT boxes are medium
        assert metrics[name] == pytest.approx(expected, abs=1e-12)
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APl"])  # no GT there: NaN, not -1


def test_legacy_plus_one_converts_boxes_as_glip_does(three_sizes_gt: dict) -> None:
    detections = [ImageDetections(1, [[10.0, 20.0, 30.0, 60.0]], [0.5], [3])]
    assert detections_to_records(three_sizes_gt, detections)[0]["bbox"] == [10.0, 20.0, 20.0, 40.0]
    legacy = detections_to_records(three_sizes_gt, detections, legacy_plus_one=True)
    assert legacy[0]["bbox"] == [10.0, 20.0, 21.0, 41.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_legacy_plus_one_changes_ap(backend: str) -> None:
    gt = ground_truth_from_boxes([(1, 1, [10, 20, 20, 40])], image_ids=[1], category_ids=[1])
    detection = [ImageDetections(1, [[10.0, 20.0, 30.0, 60.0]], [0.5], [1])]
    assert evaluate_coco(gt, detection, backend=backend)["AP"] == pytest.approx(1.0, abs=1e-12)
    # with +1 the box is 21x41: IoU = 800/861 = 0.929, a match at IoU 0.50..0.90 but not at 0.95
    legacy = evaluate_coco(gt, detection, backend=backend, legacy_plus_one=True)
    assert legacy["AP"] == pytest.approx(0.9, abs=1e-12)
    assert legacy["AP75"] == pytest.approx(1.0, abs=1e-12)


def test_unknown_backend_names_the_valid_ones(three_sizes_gt: dict) -> None:
    with pytest.raises(UnknownNameError) as err:
        evaluate_coco(three_sizes_gt, [], backend="pycocotool")
    message = str(err.value)
    assert "evaluator backend" in message and "Did you mean 'pycocotools'?" in message
    assert "faster-coco-eval" in message


@pytest.mark.parametrize(
    ("detection", "what"),
    [(ImageDetections(99, [[0, 0, 5, 5]], [0.5], [3]), "image ids [99]"),
     (ImageDetections(1, [[0, 0, 5, 5]], [0.5], [4]), "category ids [4]")],
)
def test_detections_outside_the_ground_truth_are_a_data_error(three_sizes_gt: dict, detection, what: str) -> None:
    with pytest.raises(DataError, match=what.replace("[", r"\[").replace("]", r"\]")):
        evaluate_coco(three_sizes_gt, [detection])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_is_left_unmodified(three_sizes_gt: dict, backend: str) -> None:
    before = copy.deepcopy(three_sizes_gt)
    evaluate_coco(three_sizes_gt, [dets(1, [SMALL], [0.9], [3])], backend=backend)
    assert three_sizes_gt == before


def test_library_output_is_kept_off_stdout_but_logged(three_sizes_gt, capsys, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="bench.eval.coco_eval"):
        evaluate_coco(three_sizes_gt, [dets(1, [SMALL], [0.9], [3])], backend="pycocotools")
    assert capsys.readouterr().out == ""
    assert "Average Precision" in caplog.text


@pytest.mark.parametrize(
    "config",
    [
        dict(images=40, categories=5, gt_per_image=4, dets_per_image=25, seed=0),
        dict(images=60, categories=8, gt_per_image=6, dets_per_image=60, seed=1, crowd_fraction=0.2),
        dict(images=30, categories=1, gt_per_image=8, dets_per_image=150, seed=2),  # > 100 per image and class
        dict(images=50, categories=12, gt_per_image=3, dets_per_image=10, seed=3, empty_fraction=0.4),
    ],
    ids=["plain", "crowded", "over-max-dets", "sparse"],
)
@pytest.mark.parametrize("legacy_plus_one", [False, True])
def test_backends_agree_on_random_results(config: dict, legacy_plus_one: bool) -> None:
    """faster-coco-eval is offered (and the default) only because it reproduces pycocotools.

    Observed: the numbers agree to within 1e-16; they are not always bit-identical, because
    pycocotools adds np.spacing(1) to the precision denominator (a perfect prefix scores
    0.9999999999999998 there, 1.0 in the C++ core).
    """
    gt, detections = synthetic_dataset(**config)
    reference = evaluate_coco(gt, detections, backend="pycocotools", legacy_plus_one=legacy_plus_one)
    faster = evaluate_coco(gt, detections, backend="faster-coco-eval", legacy_plus_one=legacy_plus_one)
    assert all(same(reference[name], faster[name]) for name in COCO_METRICS), (reference, faster)
    assert 0.05 < reference["AP"] < 0.95  # the data is neither trivial nor hopeless


def test_default_backend_is_the_fast_one() -> None:
    assert DEFAULT_COCO_BACKEND == "faster-coco-eval"
    assert set(BACKENDS) == {"faster-coco-eval", "pycocotools"}
