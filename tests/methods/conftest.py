"""The detectors every method contract test runs on, each with a tiny detection task.

* ``glip``: the small GLIP of fixture A with its official-code weights;
* ``grounding-dino``: a tiny random Grounding DINO (:mod:`tests.grounding_dino_support`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from bench.data.prompts import Prompt, build_prompt
from bench.data.transforms import pad_batch
from bench.models.glip.model import GLIP
from bench.models.grounding_dino.model import GroundingDino
from tests.grounding_dino_support import SHAPE_CLASSES, tiny_task


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
def task(glip_a_factory, fixture_a_reference) -> Task:
    model = glip_a_factory()
    prompt = build_prompt(SHAPE_CLASSES, model.tokenizer)
    targets = [{"boxes": fixture_a_reference["train.target0.boxes_resized_xyxy"], "labels": fixture_a_reference["train.target0.labels"]}]
    return Task(fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"], targets, prompt)


@pytest.fixture(scope="session")
def grounding_dino_task(grounding_dino_factory) -> Task:
    images, sizes, targets, prompt = tiny_task(grounding_dino_factory())
    return Task(images, sizes, targets, prompt)


def glip_outputs(model: GLIP, task: Task) -> list[torch.Tensor]:
    """Every raw prediction of GLIP on the task's images (logits, boxes, centerness, all levels)."""
    with torch.no_grad():
        features = model.backbone(task.images)
        outputs, _ = model.predict(features, model.encode_text([task.prompt] * task.images.shape[0]).features)
    return outputs.dot_product_logits + outputs.bbox_reg + outputs.centerness


def grounding_dino_outputs(model: GroundingDino, task: Task) -> list[torch.Tensor]:
    """Grounding DINO's token logits, boxes and two-stage encoder logits on the task's images."""
    with torch.no_grad():
        out = model.predict(task.images, task.sizes, [task.prompt] * task.images.shape[0])
    return [out.logits, out.pred_boxes, out.encoder_logits]


def settles_lower(losses: list[float]) -> bool:
    """Dense detectors (GLIP: anchors assigned by IoU) train smoothly: the last losses are below the first."""
    return min(losses[-3:]) < losses[0]


def reaches_lower(losses: list[float]) -> bool:
    """Set-prediction detectors (Grounding DINO) re-match a target to another query now and then, which
    makes the loss jump; training works when the run gets below its first loss."""
    return min(losses[1:]) < losses[0]


@dataclass
class Backend:
    """A detector factory, a task for it, how to read its raw outputs, and how its training loss falls."""

    name: str
    build: Callable[[], torch.nn.Module]
    task: Task
    outputs: Callable[[torch.nn.Module, Task], list[torch.Tensor]]
    loss_falls: Callable[[list[float]], bool]


@pytest.fixture(params=["glip", "grounding-dino"])
def backend(request) -> Backend:
    if request.param == "glip":
        return Backend("glip", request.getfixturevalue("glip_a_factory"), request.getfixturevalue("task"), glip_outputs, settles_lower)
    return Backend(
        "grounding-dino", request.getfixturevalue("grounding_dino_factory"), request.getfixturevalue("grounding_dino_task"),
        grounding_dino_outputs, reaches_lower,
    )
