"""Detect on a split and score it with the dataset's evaluator (COCO AP or LVIS Fixed AP)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.catalog import DatasetSpec
from bench.data.dataset import DetectionDataset
from bench.data.prompts import Prompt, build_prompts
from bench.data.transforms import boxes_to_original, eval_transform, pad_batch
from bench.detections import ImageDetections
from bench.eval import EVALUATORS
from bench.models.base import DetectorBase


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one split and how fast it was detected (images per second, detection only)."""

    metrics: dict[str, float]
    images_per_s: float


def vocabulary_prompts(model: DetectorBase, dataset: DetectionDataset, spec: DatasetSpec) -> list[Prompt]:
    """The evaluation captions: the whole vocabulary, in chunks of the catalog's ``chunk_size``."""
    return build_prompts(
        dataset.prompt_classes(), model.tokenizer, chunk_size=spec.chunk_size, style=model.prompt_style, max_query_len=model.text_slots
    )


@torch.no_grad()
def detect_split(
    model: DetectorBase,
    dataset: DetectionDataset,
    prompts: list[Prompt],
    *,
    batch_size: int,
    detections_per_image: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    progress: str | None = None,
) -> list[ImageDetections]:
    """Every image's detections in original pixels and dataset category ids, best ``detections_per_image`` kept.

    ``dataset`` must carry the model's evaluation transform (see :func:`evaluation_dataset`).
    """
    device = next(model.parameters()).device
    label_to_category = dataset.annotations.label_to_category_id
    was_training = model.training
    model.eval()
    found: list[ImageDetections] = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=progress, disable=progress is None, leave=False, unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, sizes = pad_batch([image for image, _ in items], model.input_spec.size_divisibility)
        with autocast():
            per_image = model.detect(images.to(device), sizes.to(device), prompts)
        for (image, target), detections in zip(items, per_image):
            order = torch.argsort(detections.scores.float(), descending=True)[:detections_per_image]
            boxes = boxes_to_original(detections.boxes[order].float(), image.shape[-2:], target["original_size"])
            labels = detections.labels[order].tolist()
            found.append(
                ImageDetections(
                    image_id=int(target["image_id"]),
                    boxes=boxes.cpu().numpy(),
                    scores=detections.scores[order].float().cpu().numpy(),
                    category_ids=np.array([label_to_category[label] for label in labels], dtype=np.int64),
                )
            )
    model.train(was_training)
    return found


def score(spec: DatasetSpec, dataset: DetectionDataset, detections: list[ImageDetections]) -> dict[str, float]:
    """The dataset's metrics (its catalog ``evaluator`` and ``evaluator_options``)."""
    return EVALUATORS.get(spec.evaluator)(dataset.annotations.data, detections, **dict(spec.evaluator_options))


def evaluation_dataset(dataset: DetectionDataset, model: DetectorBase) -> DetectionDataset:
    """The same split with the model's test-time resize and pixel normalisation."""
    inputs = model.input_spec
    return DetectionDataset(
        dataset.annotations,
        dataset.image_dir,
        transform=eval_transform(inputs.pixels, inputs.min_size_test, inputs.max_size_test),
        caption_prompts=dataset.caption_prompts,
    )


def evaluate(
    model: DetectorBase,
    dataset: DetectionDataset,
    spec: DatasetSpec,
    *,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    progress: str | None = None,
) -> Evaluation:
    """Detect on ``dataset`` (already carrying the evaluation transform) and score it."""
    prompts = vocabulary_prompts(model, dataset, spec)
    start = time.perf_counter()
    detections = detect_split(
        model, dataset, prompts, batch_size=batch_size, detections_per_image=spec.detections_per_image,
        autocast=autocast, progress=progress,
    )
    seconds = time.perf_counter() - start
    return Evaluation(score(spec, dataset, detections), len(dataset) / max(seconds, 1e-9))
