"""The grounding corpus glip-nano is pre-trained on: the ``shapes-pretrain`` suite of the catalog.

Each part names the same base world differently (shapes alone, colour+shape phrases, size+shape
phrases). Captions are drawn per image as GLIP's detection-as-grounding data does: the phrases of
the objects present plus absent ones of the same part, up to the part's ``chunk_size``
(:class:`bench.train.batches.TrainingPrompts`). Phrases of different parts never share a caption,
because "circle" and "red circle" can name the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.catalog import Catalog, open_split, require_data
from bench.data.dataset import DetectionDataset
from bench.train.batches import TrainingPrompts, training_subset

CORPUS_SUITE = "shapes-pretrain"
DOWNSTREAM_SUITE = "shapes-odinw"


@dataclass
class CorpusPart:
    """One naming scheme of the corpus: its training images and how their captions are drawn."""

    name: str
    train: DetectionDataset
    prompts: TrainingPrompts


def open_corpus(catalog: Catalog, tokenizer, text_slots: int, cache_dir: Path | None) -> list[CorpusPart]:
    """The corpus parts, generated below ``cache_dir`` on first use."""
    specs = catalog.resolve(CORPUS_SUITE, [])
    require_data(specs, None, cache_root=cache_dir)
    parts = []
    for spec in specs:
        train = training_subset(open_split(spec, "train", None, cache_root=cache_dir))
        parts.append(CorpusPart(spec.name, train, TrainingPrompts(train.prompt_classes(), tokenizer, text_slots, spec.chunk_size)))
    return parts
