"""Training batches: a deterministic, resumable stream, and the prompts that name their classes.

Sample ``g`` of the stream (counting from the start of training) is image ``perm_e[g mod N] mod n``
of epoch ``e = g div N``, where ``n`` images are repeated ``copies`` times (``N = n * copies``) and
``perm_e`` is a permutation seeded by (seed, e). Its augmentation draws from a generator seeded by
(seed, g). So batch ``b`` is the same whether training started at batch 0 or resumed at ``b``, in the
main process or in data-loader workers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data.dataset import DetectionDataset
from bench.data.prompts import GLIP_STYLE, Prompt, PromptClass, PromptStyle, build_prompt
from bench.data.transforms import pad_batch, train_transform
from bench.errors import BenchError
from bench.models.base import InputSpec


@dataclass
class TrainingBatch:
    """A padded batch, its un-padded sizes, per-image targets (resized pixels) and per-image prompts."""

    images: torch.Tensor
    sizes: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    prompts: list[Prompt]


class TrainingPrompts:
    """The caption a training image is described with.

    The whole vocabulary in one caption when it fits the model's text slots (and the dataset does
    not ask for chunks); otherwise, per image, its own classes plus negatives drawn from the rest up
    to ``chunk_size`` classes, as GLIP samples captions for large vocabularies.
    """

    def __init__(
        self, classes: Sequence[PromptClass], tokenizer, text_slots: int, chunk_size: int | None, style: PromptStyle = GLIP_STYLE
    ) -> None:
        self.classes = sorted(classes, key=lambda c: c.label)
        self.tokenizer = tokenizer
        self.style = style
        self.text_slots = text_slots
        self.chunk_size = chunk_size
        self.whole = self._whole_vocabulary()
        if self.whole is None and chunk_size is None:
            raise BenchError(
                f"The {len(self.classes)} class names do not fit in one caption of {text_slots} text slots. "
                "Give the dataset a chunk_size in its catalog entry (datasets/*.yaml), as LVIS has."
            )

    def _whole_vocabulary(self) -> Prompt | None:
        if self.chunk_size is not None and len(self.classes) > self.chunk_size:
            return None
        try:
            return build_prompt(self.classes, self.tokenizer, style=self.style, max_query_len=self.text_slots)
        except BenchError:
            return None

    def for_image(self, labels: torch.Tensor, rng: random.Random) -> Prompt:
        if self.whole is not None:
            return self.whole
        size = self.chunk_size
        positive = sorted(set(labels.tolist()))[:size]
        others = [c.label for c in self.classes if c.label not in positive]
        chosen = set(positive) | set(rng.sample(others, min(len(others), size - len(positive))))
        chosen_classes = [c for c in self.classes if c.label in chosen]
        return build_prompt(chosen_classes, self.tokenizer, style=self.style, max_query_len=self.text_slots)


class _StreamSampler(Sampler[list[int]]):
    """Yields batches of stream positions ``g`` from ``start_batch`` for ``num_batches`` batches;
    with several processes, process ``rank`` takes every ``world_size``-th position of each batch."""

    def __init__(self, start_batch: int, num_batches: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start_batch, self.num_batches, self.batch_size = start_batch, num_batches, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, self.start_batch + self.num_batches):
            yield list(range(b * self.batch_size + self.rank, (b + 1) * self.batch_size, self.world_size))

    def __len__(self) -> int:
        return self.num_batches


class _AugmentedStream(Dataset):
    """Maps a stream position to its augmented image and target (see the module docstring)."""

    def __init__(self, dataset: DetectionDataset, inputs: InputSpec, copies: int, seed: int, flip_prob: float) -> None:
        self.dataset = dataset
        self.inputs = inputs
        self.copies = copies
        self.seed = seed
        self.flip_prob = flip_prob
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {epoch: torch.randperm(len(self.dataset) * self.copies, generator=generator)}
        return self._permutations[epoch]

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, position: int):
        per_epoch = len(self.dataset) * self.copies
        epoch, offset = divmod(position, per_epoch)
        index = int(self._permutation(epoch)[offset]) % len(self.dataset)
        rng = random.Random(f"{self.seed}:{position}")
        transform = train_transform(
            self.inputs.pixels, self.inputs.min_sizes_train, self.inputs.max_size_train, flip_prob=self.flip_prob, rng=rng
        )
        image, target = self.dataset[index]
        image, target = transform(image, target)
        return image, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}, position


def training_loader(
    dataset: DetectionDataset,
    inputs: InputSpec,
    prompts: TrainingPrompts,
    *,
    batch_size: int,
    copies: int,
    seed: int,
    start_batch: int,
    num_batches: int,
    workers: int = 0,
    flip_prob: float = 0.5,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[TrainingBatch]:
    """Batches ``start_batch .. start_batch + num_batches - 1`` of the stream, ready for the model
    (process ``rank`` of ``world_size`` gets its ``batch_size / world_size`` share of each)."""
    if batch_size % world_size:
        raise BenchError(
            f"A batch of {batch_size} images cannot be shared evenly by {world_size} processes; "
            "choose a batch_size (--protocol-set batch_size=N) that is a multiple of the number of GPUs."
        )
    stream = _AugmentedStream(dataset, inputs, copies, seed, flip_prob)

    def collate(items):
        images, targets, positions = zip(*items)
        padded, sizes = pad_batch(list(images), inputs.size_divisibility)
        image_prompts = [prompts.for_image(t["labels"], random.Random(f"{seed}:prompt:{g}")) for t, g in zip(targets, positions)]
        # A chunked caption names at most chunk_size classes: boxes of classes it leaves out are dropped, as GLIP does.
        kept = []
        for target, prompt in zip(targets, image_prompts):
            named = torch.tensor([int(label) in prompt.label_to_tokens for label in target["labels"]], dtype=torch.bool)
            kept.append({"boxes": target["boxes"][named], "labels": target["labels"][named]})
        return TrainingBatch(padded, sizes, kept, image_prompts)

    loader = DataLoader(
        stream,
        batch_sampler=_StreamSampler(start_batch, num_batches, batch_size, rank, world_size),
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator(),  # leave torch's global generator (dropout) untouched when iterating
    )
    yield from loader


def trainable_images(dataset: DetectionDataset) -> list[int]:
    """Image ids with at least one non-crowd box (GLIP drops the others from training)."""
    by_image = dataset.annotations.annotations_by_image
    return [i for i in dataset.image_ids if any(not a["iscrowd"] for a in by_image[i])]


def training_subset(dataset: DetectionDataset) -> DetectionDataset:
    """The same split restricted to :func:`trainable_images`."""
    return DetectionDataset(dataset.annotations, dataset.image_dir, caption_prompts=dataset.caption_prompts,
                            image_ids=trainable_images(dataset))
