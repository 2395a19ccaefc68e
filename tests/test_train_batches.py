"""The training batch stream is a function of (seed, batch index): resuming at batch k replays batches k...

Five training images repeated twice (10 samples per epoch) in batches of 2, so eight batches cross
an epoch boundary (a new permutation) in the middle of the stream.
"""

from __future__ import annotations

import pytest
import torch

from bench.catalog import Catalog, open_split
from bench.data.dataset import DetectionDataset
from bench.models import MODELS
from bench.train.batches import TrainingBatch, TrainingPrompts, training_loader
from tests.run_support import MODEL, synthetic_cache

DATASET = "shapes-colours"
IMAGES, COPIES, BATCH, SEED = 5, 2, 2, 3


@pytest.fixture(scope="module")
def stream_inputs(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    split = open_split(Catalog.load().dataset(DATASET), "train", None, cache_root=cache)
    dataset = DetectionDataset(split.annotations, split.image_dir, image_ids=split.image_ids[:IMAGES])
    model = MODELS.get(MODEL)()
    return dataset, model


def batches(stream_inputs, start: int, count: int, *, seed: int = SEED, chunk_size: int | None = None, workers: int = 0) -> list[TrainingBatch]:
    dataset, model = stream_inputs
    prompts = TrainingPrompts(dataset.prompt_classes(), model.tokenizer, model.text_slots, chunk_size)
    return list(training_loader(dataset, model.input_spec, prompts, batch_size=BATCH, copies=COPIES, seed=seed,
                                start_batch=start, num_batches=count, workers=workers))


def same_batch(a: TrainingBatch, b: TrainingBatch) -> bool:
    return (
        torch.equal(a.images, b.images)
        and torch.equal(a.sizes, b.sizes)
        and len(a.targets) == len(b.targets)
        and all(torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a.targets, b.targets))
        and a.prompts == b.prompts
    )


@pytest.mark.parametrize("chunk_size", [None, 3], ids=["whole-vocabulary", "sampled-negatives"])
def test_a_stream_started_at_batch_k_replays_batches_k_onwards(stream_inputs, chunk_size):
    full = batches(stream_inputs, 0, 8, chunk_size=chunk_size)
    resumed = batches(stream_inputs, 3, 5, chunk_size=chunk_size)
    assert len(full) == 8 and len(resumed) == 5
    for index, batch in enumerate(resumed, start=3):
        assert same_batch(batch, full[index]), index


def test_sampled_prompts_differ_between_images(stream_inputs):
    prompts = [p.caption for b in batches(stream_inputs, 0, 4, chunk_size=3) for p in b.prompts]
    assert len(set(prompts)) > 1


def test_the_seed_and_the_position_change_the_batches(stream_inputs):
    first = batches(stream_inputs, 0, 6)
    other_seed = batches(stream_inputs, 0, 6, seed=SEED + 1)
    assert not all(same_batch(a, b) for a, b in zip(first, other_seed))
    assert not same_batch(first[0], first[5])  # batch 5 opens the second epoch: a new permutation and augmentation


def test_worker_processes_produce_the_same_stream(stream_inputs):
    in_process = batches(stream_inputs, 2, 3)
    in_workers = batches(stream_inputs, 2, 3, workers=2)
    assert all(same_batch(a, b) for a, b in zip(in_process, in_workers, strict=True))
