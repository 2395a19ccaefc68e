"""Captions fitted to a model's text slots, for training and for every evaluation of a cell.

Kept apart from the cell so that everything that evaluates a model on a dataset (the cell's test,
its retention set, ``run_bench.py eval --tuned``) captions that dataset the same way.
"""

from __future__ import annotations

import dataclasses

from bench.catalog import DatasetSpec
from bench.data.dataset import DetectionDataset
from bench.data.prompts import fitting_chunk_size
from bench.models.base import DetectorBase
from bench.train.batches import TrainingPrompts


def with_fitting_captions(dataset: DatasetSpec, train_set: DetectionDataset, model: DetectorBase) -> DatasetSpec:
    """``dataset`` with a ``chunk_size`` when its vocabulary does not fit one caption of the model's
    text slots and its catalog entry sets none (a small model on a large vocabulary: glip-nano's 64
    slots and PascalVOC's 20 names): captions then hold as many classes as fit, as GLIP chunks LVIS's.
    The choice follows from the model and the data, which the run key already covers."""
    if dataset.chunk_size is not None:
        return dataset
    classes = train_set.prompt_classes()
    size = fitting_chunk_size(classes, model.tokenizer, style=model.prompt_style, max_query_len=model.text_slots)
    if size is None:
        return dataset
    print(f"{dataset.name}: its {len(classes)} class names do not fit one caption of {model.text_slots} text slots, so "
          f"each caption holds {size} of them (training samples them per image, evaluation walks them in chunks).", flush=True)
    return dataclasses.replace(dataset, chunk_size=size)


def used_text_positions(train_set: DetectionDataset, model: DetectorBase, dataset: DatasetSpec) -> int | None:
    """Token positions the captions of ``dataset`` fill when its whole vocabulary is one caption; None
    (every text slot) when captions are sampled chunks, whose longest is not known in advance."""
    prompts = TrainingPrompts(train_set.prompt_classes(), model.tokenizer, model.text_slots, dataset.chunk_size,
                              model.prompt_style)
    return prompts.whole.num_tokens if prompts.whole is not None else None
