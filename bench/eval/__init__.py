"""Evaluation: COCO and LVIS box AP, suite scores, and bootstrap confidence intervals over images."""

from bench.eval.aggregate import SUITE_AGGREGATIONS, BootstrapCI, PerImageMatches, aggregate_suite, bootstrap_ci
from bench.eval.coco_eval import COCO_BACKENDS, COCO_METRICS, DEFAULT_COCO_BACKEND, evaluate_coco
from bench.eval.lvis_eval import DEFAULT_LVIS_BACKEND, LVIS_BACKENDS, LVIS_METRICS, evaluate_lvis
from bench.registry import Registry

# A dataset's catalog ``evaluator`` names one of these; its ``evaluator_options`` are their keyword arguments.
EVALUATORS: Registry = Registry("evaluator")
EVALUATORS.add("coco", evaluate_coco, "COCO box AP family (faster-coco-eval or pycocotools)")
EVALUATORS.add("lvis", evaluate_lvis, "LVIS box AP, Fixed AP by default (the lvis package)")

__all__ = [
    "COCO_BACKENDS",
    "COCO_METRICS",
    "DEFAULT_COCO_BACKEND",
    "DEFAULT_LVIS_BACKEND",
    "EVALUATORS",
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
