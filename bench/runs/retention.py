"""Retention: how much of its pre-training world a tuned model still detects.

Users of these detectors report that tuning destroys their open-vocabulary ability (e.g. LoRA on a
detector falling to 0 mAP, mmdetection#10932; YOLO-World#232), and no score on the target dataset
shows it. With the protocol's ``retention`` on, every cell also scores its selected weights on the
model's retention set, declared in its ``datasets/models.yaml`` entry (``retention``: COCO val2017's
first 500 images for the real detectors; for glip-nano the held-out test images of its pre-training
corpus). The zero-shot row of the same model scores the untouched base there, so a report can say
what each method cost (:mod:`bench.report.retention`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

from bench.catalog import Catalog, RetentionSet, load_split_annotations, open_split, require_data
from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.runs.captions import with_fitting_captions
from bench.train.evaluate import evaluate, evaluation_dataset


def retention_set(catalog: Catalog, model: str) -> RetentionSet:
    """The retention set ``model`` declares; refused, with where to declare one, when there is none."""
    facts = catalog.models.get(model) if model in catalog.models else None
    if facts is None or facts.retention is None:
        raise BenchError(
            f"--protocol-set retention=true scores every cell on its model's retention set, but {model} declares none. "
            "Add retention: {datasets: [NAME], split: test, images: N} to its entry in datasets/models.yaml "
            "(datasets/README.md: \"Overlap flags and published numbers\"), or leave retention off.")
    return facts.retention


def require_retention_data(catalog: Catalog, model: str, data_root: Path | None, cache_dir: Path | None) -> None:
    """Before any work: the retention set exists in the catalog and on disk (synthetic ones are generated)."""
    chosen = retention_set(catalog, model)
    require_data([catalog.dataset(name) for name in chosen.datasets], data_root, [chosen.split], cache_root=cache_dir)


def score_retention(model: DetectorBase, catalog: Catalog, model_name: str, data_root: Path | None,
                    cache_dir: Path | None, *, batch_size: int, autocast: Callable[[], AbstractContextManager],
                    progress: bool = False) -> dict[str, dict[str, float]]:
    """The metrics of ``model`` on each dataset of its retention set, by dataset name."""
    chosen = retention_set(catalog, model_name)
    scores = {}
    for name in chosen.datasets:
        spec = catalog.dataset(name)
        annotations = load_split_annotations(spec, chosen.split, data_root, cache_dir)
        if chosen.images is not None:
            annotations = annotations.subset(annotations.image_ids[: chosen.images])
        split = open_split(spec, chosen.split, data_root, cache_root=cache_dir, annotations=annotations)
        spec = with_fitting_captions(spec, split, model)
        result = evaluate(model, evaluation_dataset(split, model), spec, batch_size=batch_size, autocast=autocast,
                          progress=f"retention: {name}" if progress else None)
        scores[name] = dict(result.metrics)
    return scores
