"""Evaluation: COCO and LVIS box AP, suite scores, and bootstrap confidence intervals over images."""

from bench.eval.aggregate import SUITE_AGGREGATIONS, BootstrapCI, PerImageMatches, aggregate_suite, bootstrap_ci
from bench.eval.coco_eval import COCO_BACKENDS, COCO_METRICS, DEFAULT_COCO_BACKEND, evaluate_coco
from bench.eval.lvis_eval import DEFAULT_LVIS_BACKEND, LVIS_BACKENDS, LVIS_METRICS, evaluate_lvis

__all__ = [
    "COCO_BACKENDS",
    "COCO_METRICS",
    "DEFAULT_COCO_BACKEND",
    "DEFAULT_LVIS_BACKEND",
    "LVIS_BACKENDS",
    "LVIS_METRICS",
    "SUITE_AGGREGATIONS",
    "BootstrapCI",
    "PerImageMatches",
    "aggregate_suite",
    "bootstrap_ci",
    "evaluate_coco",
    "evaluate_lvis",
]
