"""A small pre-trained GLIP (fixture A) and a tiny detection task for the method contract tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench.data.prompts import Prompt, PromptClass, build_prompt
from bench.data.transforms import pad_batch
from bench.models.glip.checkpoint import load_official_checkpoint
from bench.models.glip.config import from_reduced_config
from bench.models.glip.language import load_tokenizer
from bench.models.glip.model import GLIP


@dataclass
class Task:
    """One padded batch of images, their targets, and the prompt naming the classes."""

    images: torch.Tensor
    sizes: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    prompt: Prompt

    def batch(self, size: int) -> "Task":
        """The same image ``size`` times (flipped copies after the first, so rows differ)."""
        image = self.images[0, :, : int(self.sizes[0, 0]), : int(self.sizes[0, 1])]
        width = image.shape[-1]
        images, targets = [], []
        for i in range(size):
            flip = i % 2 == 1
            images.append(image.flip(-1) if flip else image)
            boxes = self.targets[0]["boxes"].clone()
            if flip:
                boxes[:, [0, 2]] = width - 1 - boxes[:, [2, 0]]
            targets.append({"boxes": boxes, "labels": self.targets[0]["labels"]})
        padded, sizes = pad_batch(images)
        return Task(padded, sizes, targets, self.prompt)


@pytest.fixture(scope="session")
def glip_a_factory(fixture_a_dir):
    """Builds a fresh copy of the fixture-A GLIP (its official-code weights) on each call."""
    config = from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")
    tokenizer = load_tokenizer(fixture_a_dir / "bert_local")
    state = GLIP(config, tokenizer)
    load_official_checkpoint(state, fixture_a_dir / "glip_reduced_A.pth")
    weights = state.state_dict()

    def build() -> GLIP:
        model = GLIP(config, tokenizer)
        model.load_state_dict(weights)
        return model.eval()

    return build


@pytest.fixture(scope="session")
def task(glip_a_factory, fixture_a_reference) -> Task:
    model = glip_a_factory()
    prompt = build_prompt([PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")], model.tokenizer)
    targets = [{"boxes": fixture_a_reference["train.target0.boxes_resized_xyxy"], "labels": fixture_a_reference["train.target0.labels"]}]
    return Task(fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"], targets, prompt)
