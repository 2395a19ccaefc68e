"""One method's training step on a synthetic batch, measured in this process.

    python -m bench.profile.step '{"model": "glip-t", "method": "sdpt", ...}'   (one JSON object: StepRequest)

The model is built as a sweep builds it (``--weights``, or ``--random-init``), the method applied
with its default config, the model put in training mode with the protocol's frozen-module rule
(frozen modules in eval mode, :mod:`bench.train.modes`), AdamW built with the sweep's parameter
groups, activation checkpointing and the attention kernel set as requested (else as the protocol
says), and the step run
under the requested autocast. ``warmup`` steps come first (on a GPU the
first steps pay for allocator growth, cuDNN autotuning and AdamW's moment buffers), then ``steps``
timed steps; the median is reported. Peak memory is the CUDA allocator's peak over the timed steps,
or on a CPU the process's peak resident set over them (:class:`bench.train.meters.PeakMemory`).

Two reference rows: ``zero-shot`` is the no-grad forward with targets; ``frozen`` freezes
everything but lets the backward run through the whole network to the image and the text input
embeddings (input gradients only): back-propagation through the frozen detector, the floor under
every method that trains inside it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from bench.data.prompts import PromptClass, build_prompt
from bench.devices import pick_device
from bench.models import ModelInputs, build_model
from bench.train.loop import autocast_for
from bench.train.meters import PeakMemory
from bench.train.modes import set_training_modes
from bench.train.optim import build_optimizer
from bench.train.protocol import resolve_protocol
from bench.tuning.base import build_method, freeze_all

FROZEN = "frozen"
# Class names of the synthetic caption: common detection classes, as many as --classes asks for.
CLASS_NAMES = ("person", "car", "dog", "bicycle", "boat", "bird", "chair", "bottle", "horse", "cat", "bus", "truck",
               "traffic light", "umbrella", "handbag", "potted plant", "sheep", "cow", "airplane", "train")
BOXES_PER_IMAGE = 4


@dataclass(frozen=True)
class StepRequest:
    """What to measure: ``method`` (registered, ``frozen`` or ``zero-shot``) on ``model`` at
    ``height`` x ``width`` pixels, ``batch`` images, a caption of ``classes`` class names."""

    model: str
    method: str
    height: int
    width: int
    amp: str = "none"
    device: str = "auto"
    batch: int = 1
    classes: int = 5
    warmup: int = 1
    steps: int = 3
    weights: str | None = None
    tokenizer: str | None = None
    protocol: str = "glip-odinw"
    checkpointing: str | None = None  # None: the protocol's activation_checkpointing
    attention: str | None = None  # None: the protocol's attention


class _InputsRequireGrad:
    """An ``input_embedding_hook`` that makes the text input embeddings a leaf requiring grad."""

    def __call__(self, embeddings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return embeddings.detach().requires_grad_(True), mask


def synthetic_batch(model, request: StepRequest, device: torch.device):
    """Random images, one caption of ``classes`` names (repeated past the list), boxes inside each image."""
    generator = torch.Generator().manual_seed(0)
    names = [CLASS_NAMES[i % len(CLASS_NAMES)] + ("" if i < len(CLASS_NAMES) else f" {i // len(CLASS_NAMES)}")
             for i in range(request.classes)]
    prompt = build_prompt([PromptClass(i + 1, name) for i, name in enumerate(names)], model.tokenizer,
                          style=model.prompt_style, max_query_len=model.text_slots)
    images = torch.randn(request.batch, 3, request.height, request.width, generator=generator).to(device)
    sizes = torch.tensor([[request.height, request.width]] * request.batch, device=device)
    scale = torch.tensor([request.width, request.height, request.width, request.height])
    targets = []
    for _ in range(request.batch):
        corners = torch.rand(BOXES_PER_IMAGE, 2, 2, generator=generator).sort(dim=1).values
        boxes = (torch.cat([corners[:, 0], corners[:, 1] + 0.05], dim=1).clamp(max=1.0) * scale).to(device)
        labels = torch.randint(1, request.classes + 1, (BOXES_PER_IMAGE,), generator=generator).to(device)
        targets.append({"boxes": boxes, "labels": labels})
    return images, sizes, prompt, targets


def measure_step(request: StepRequest) -> dict:
    """Median seconds and peak memory of ``request``'s step, with what it trained."""
    device = pick_device(request.device)
    torch.manual_seed(0)
    model = build_model(request.model, ModelInputs(request.weights, request.tokenizer))
    protocol = resolve_protocol(request.protocol, "full", {})
    images, sizes, prompt, targets = synthetic_batch(model, request, device)
    no_grad = request.method == "zero-shot"
    if request.method == FROZEN:
        freeze_all(model)
        images.requires_grad_(True)
        model.text_encoder().input_embedding_hook = _InputsRequireGrad()
        trainable, optimizer = {}, None
    else:
        method = build_method(request.method)
        trainable = method.apply(model)
        optimizer = build_optimizer(model, trainable, method.config, protocol)
    model.set_activation_checkpointing(request.checkpointing or protocol.activation_checkpointing)
    attention = request.attention or protocol.attention
    if attention != "default":
        model.set_attention_kernel(attention)
    model.to(device)
    set_training_modes(model, protocol.frozen_modules)
    autocast, scaler = autocast_for(device, request.amp)

    def step() -> float:
        with torch.set_grad_enabled(not no_grad), autocast():
            total = sum(model(images, sizes, prompt, targets).values())
        if not no_grad:
            (scaler.scale(total) if scaler else total).backward()
        if optimizer is not None:
            scaler.step(optimizer) if scaler else optimizer.step()
            if scaler:
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
        images.grad = None
        return float(total.detach())

    for _ in range(request.warmup):
        step()
    memory = PeakMemory(device)
    memory.reset()
    seconds, losses = [], []
    for _ in range(request.steps):
        _synchronize(device)
        start = time.perf_counter()
        losses.append(step())
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {
        **asdict(request),
        "seconds": statistics.median(seconds),
        "peak_memory_gib": memory.read() / 2**30,
        "peak_memory_kind": memory.kind,
        "trainable": sum(p.numel() for p in trainable.values()),
        "loss": losses[-1],
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    print(json.dumps(measure_step(StepRequest(**json.loads(sys.argv[1])))))
