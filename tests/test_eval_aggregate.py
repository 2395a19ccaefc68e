"""Suite aggregation and bootstrap confidence intervals over images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.detections import ImageDetections
from bench.errors import BenchError, UnknownNameError
from bench.eval import COCO_METRICS, PerImageMatches, aggregate_suite, bootstrap_ci, evaluate_coco
from bench.eval.synthetic import ground_truth_from_boxes, synthetic_dataset

ODINW13 = ["AerialMaritimeDrone", "Aquarium", "CottontailRabbits", "EgoHands", "NorthAmericaMushrooms", "Packages",
           "PascalVOC", "pistols", "pothole", "Raccoon", "ShellfishOpenImages", "thermalDogsAndPeople",
           "VehiclesOpenImages"]


def test_mean_is_the_unweighted_average() -> None:
    scores = {name: (i + 1) / 100 for i, name in enumerate(ODINW13)}  # 0.01 .. 0.13
    assert aggregate_suite(scores, "mean", members=ODINW13) == pytest.approx(0.07, abs=1e-15)


def test_members_select_and_must_all_be_present() -> None:
    scores = {"a": 0.2, "b": 0.4, "extra": 1.0}
    assert aggregate_suite(scores, "mean", members=["a", "b"]) == pytest.approx(0.3, abs=1e-15)
    with pytest.raises(BenchError, match=r"no score for 1 of its 3 datasets \(c\)"):
        aggregate_suite(scores, "mean", members=["a", "b", "c"])


@pytest.mark.parametrize(("scores", "message"), [({}, "empty suite"), ({"a": 0.5, "b": math.nan}, "score of b is NaN")])
def test_empty_or_undefined_scores_are_refused(scores: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        aggregate_suite(scores, "mean")


def test_unknown_aggregation_names_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="Unknown suite aggregation 'maen'. Did you mean 'mean'"):
        aggregate_suite({"a": 0.5}, "maen")


@pytest.fixture(scope="module")
def random_results() -> tuple[dict, list[ImageDetections]]:
    return synthetic_dataset(images=80, categories=6, gt_per_image=5, dets_per_image=30, seed=11)


@pytest.mark.parametrize("metric", COCO_METRICS)
def test_identity_resample_reproduces_the_evaluation_exactly(random_results, metric: str) -> None:
    gt, detections = random_results
    matches = PerImageMatches(gt, detections, metric=metric)
    reference = evaluate_coco(gt, detections, backend="pycocotools")[metric]
    assert matches.average_precision() == reference  # bit for bit
    assert matches.average_precision(np.ones(len(matches.image_ids), dtype=np.int64)) == reference
    assert matches.average_precision() == pytest.approx(evaluate_coco(gt, detections)[metric], abs=1e-12)


def test_an_image_drawn_twice_counts_twice(random_results) -> None:
    """Re-accumulating on a multiset equals evaluating a dataset in which the repeated images are copies."""
    gt, detections = random_results
    matches = PerImageMatches(gt, detections)
    counts = np.random.default_rng(3).integers(0, 3, size=len(matches.image_ids))  # 0, 1 or 2 copies
    assert {0, 1, 2} <= set(counts.tolist())

    by_id = {d.image_id: d for d in detections}
    expanded = {"images": [], "annotations": [], "categories": gt["categories"]}
    expanded_detections = []
    for image_id, count in zip(matches.image_ids.tolist(), counts.tolist()):
        image = next(img for img in gt["images"] if img["id"] == image_id)
        for copy_index in range(count):
            new_id = image_id + 100_000 * copy_index
            expanded["images"].append({**image, "id": new_id})
            expanded["annotations"] += [
                {**ann, "id": len(expanded["annotations"]) + n + 1, "image_id": new_id}
                for n, ann in enumerate(a for a in gt["annotations"] if a["image_id"] == image_id)
            ]
            d = by_id[image_id]
            expanded_detections.append(ImageDetections(new_id, d.boxes, d.scores, d.category_ids))
    reference = evaluate_coco(expanded, expanded_detections, backend="pycocotools")["AP"]
    assert matches.average_precision(counts) == pytest.approx(reference, abs=1e-12)
    assert matches.average_precision(counts) != pytest.approx(matches.average_precision(), abs=1e-6)


def test_interval_contains_the_estimate_and_is_reproducible(random_results) -> None:
    gt, detections = random_results
    ci = bootstrap_ci(gt, detections, n_resamples=200, seed=1)
    assert ci.estimate == evaluate_coco(gt, detections, backend="pycocotools")["AP"]
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low > 0.01  # 80 noisy images cannot pin AP down to a point
    assert bootstrap_ci(gt, detections, n_resamples=200, seed=1) == ci
    assert bootstrap_ci(gt, detections, n_resamples=200, seed=2) != ci


def test_interval_shrinks_with_more_images() -> None:
    def width(images: int) -> float:
        gt, detections = synthetic_dataset(images=images, categories=4, gt_per_image=4, dets_per_image=20, seed=7)
        ci = bootstrap_ci(gt, detections, n_resamples=200)
        return ci.high - ci.low

    # the standard error falls like 1/sqrt(n): 16x the images should roughly quarter the width
    assert width(640) < 0.5 * width(40)


def test_undefined_metric_has_no_interval() -> None:
    gt = ground_truth_from_boxes([(1, 1, [0, 0, 10, 10])], image_ids=[1], category_ids=[1])  # only a small box
    detections = [ImageDetections(1, [[0, 0, 10, 10]], [0.9], [1])]
    with pytest.raises(BenchError, match="APl is undefined"):
        bootstrap_ci(gt, detections, metric="APl")
    with pytest.raises(BenchError, match="Unknown bootstrap metric 'APr'"):
        bootstrap_ci(gt, detections, metric="APr")
