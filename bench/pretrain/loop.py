"""Pre-training: full training of a freshly initialised detector on the grounding corpus.

It reuses the benchmark's own pieces rather than a second training stack: the ``full`` method with
nothing frozen decides what trains, :func:`bench.train.optim.build_optimizer` and
:class:`~bench.train.optim.LearningRateSchedule` give AdamW with warm-up and cosine decay, and every
part of the corpus is read through the deterministic, augmented stream of
:func:`bench.train.batches.training_loader`. A seeded schedule decides which part each step's batch
comes from, so a run is a function of its :class:`PretrainConfig`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.pretrain.corpus import CorpusPart
from bench.train.batches import TrainingBatch, training_loader
from bench.train.modes import set_training_modes
from bench.train.optim import LearningRateSchedule, build_optimizer
from bench.train.protocol import Protocol
from bench.tuning.base import build_method


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pre-training run besides the corpus and the model config."""

    steps: int = 8000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    clip_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 100

    def protocol(self) -> Protocol:
        return Protocol(
            name="glip-nano-pretraining", batch_size=self.batch_size, epochs=1_000_000, max_steps=self.steps,
            schedule="cosine", warmup_steps=self.warmup_steps, warmup_factor=0.01, min_lr=0.0,
            clip_grad_norm=self.clip_grad_norm, terminate_patience=None, amp="none", selection="last",
        )


def part_schedule(num_parts: int, steps: int, seed: int) -> list[int]:
    """Which corpus part each step draws its batch from: uniform, seeded, in a fixed order."""
    rng = random.Random(f"pretrain-parts:{seed}")
    return [rng.randrange(num_parts) for _ in range(steps)]


def _streams(model: DetectorBase, parts: list[CorpusPart], order: list[int], config: PretrainConfig) -> list[Iterator[TrainingBatch]]:
    return [
        training_loader(part.train, model.input_spec, part.prompts, batch_size=config.batch_size, copies=1,
                        seed=config.seed * 1_000 + index, start_batch=0, num_batches=order.count(index))
        for index, part in enumerate(parts)
    ]


def pretrain(model: DetectorBase, parts: list[CorpusPart], config: PretrainConfig, *, progress: bool = True) -> list[dict[str, float]]:
    """Train every parameter of ``model`` on ``parts``; returns the loss log (means over ``log_every`` steps)."""
    method = build_method("full", {"lr": config.lr, "weight_decay": config.weight_decay,
                                   "freeze_vision_stages": -1, "text_encoder_lr": None})
    trainable = method.apply(model)
    protocol = config.protocol()
    optimizer = build_optimizer(model, trainable, method.config, protocol)
    schedule = LearningRateSchedule(optimizer, protocol, config.steps)
    order = part_schedule(len(parts), config.steps, config.seed)
    streams = _streams(model, parts, order, config)
    set_training_modes(model)
    log: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    bar = tqdm(order, desc="pre-train glip-nano", unit="step", disable=not progress)
    for step, part in enumerate(bar):
        schedule.step(step)
        batch = next(streams[part])
        losses = model(batch.images, batch.sizes, batch.prompts, batch.targets)
        loss = sum(losses.values())
        total = float(loss.detach())
        if not math.isfinite(total):
            raise BenchError(
                f"Pre-training diverged at step {step} (loss {total}, batch from {parts[part].name}). "
                f"Lower --lr (now {config.lr}) or lengthen --warmup-steps (now {config.warmup_steps})."
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        sums["loss"] = sums.get("loss", 0.0) + total
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            count = (step % config.log_every) + 1
            entry = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"], **{k: v / count for k, v in sums.items()}}
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            sums = {}
    bar.close()
    return log
