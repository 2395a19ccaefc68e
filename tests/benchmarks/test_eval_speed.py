"""Evaluator speed per backend on COCO-val-sized and LVIS-like synthetic results.

One round each: the numbers are for choosing a default backend and spotting regressions by eye,
so no timing is asserted. Run with ``pytest tests/benchmarks --benchmark-only``.
"""

from __future__ import annotations

import pytest

from bench.eval import COCO_BACKENDS, LVIS_BACKENDS, evaluate_coco, evaluate_lvis
from bench.eval.synthetic import synthetic_dataset

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def coco_val_like():
    """COCO val2017's shape: 5,000 images, 80 classes, ~7 boxes per image, 100 detections per image."""
    return synthetic_dataset(images=5000, categories=80, gt_per_image=7, dets_per_image=100, seed=0)


@pytest.fixture(scope="module")
def lvis_like():
    """A fifth of LVIS minival: 1,000 images, 300 federated classes, ~8 boxes and 300 detections per image."""
    return synthetic_dataset(images=1000, categories=300, gt_per_image=8, dets_per_image=300, seed=0, lvis=True)


@pytest.mark.parametrize("backend", COCO_BACKENDS.names())
def test_coco_evaluation(benchmark, coco_val_like, backend: str) -> None:
    ground_truth, detections = coco_val_like
    metrics = benchmark.pedantic(
        evaluate_coco, args=(ground_truth, detections), kwargs={"backend": backend}, rounds=1, iterations=1
    )
    benchmark.extra_info["AP"] = metrics["AP"]
    assert 0.0 < metrics["AP"] < 1.0


@pytest.mark.parametrize("backend", LVIS_BACKENDS.names())
def test_lvis_fixed_ap_evaluation(benchmark, lvis_like, backend: str) -> None:
    ground_truth, detections = lvis_like
    metrics = benchmark.pedantic(
        evaluate_lvis, args=(ground_truth, detections), kwargs={"backend": backend}, rounds=1, iterations=1
    )
    benchmark.extra_info["AP"] = metrics["AP"]
    assert 0.0 < metrics["AP"] < 1.0
