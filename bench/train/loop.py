"""The training loop: a framework-free AdamW loop with validation-based selection and resume.

One call trains a method on a dataset under a :class:`Protocol`, evaluates on the validation split
at the protocol's interval, keeps the best-on-validation tuned weights (``best.safetensors`` in the
work folder), stops early when validation stops improving, checkpoints atomically, and finally
restores the best weights. The test split is never seen here: the caller scores it once, after.
An optional :class:`~bench.train.tracking.Tracker` receives the training curves (main process only).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bench.catalog import DatasetSpec
from bench.data.dataset import DetectionDataset
from bench.models.base import DetectorBase
from bench.train.batches import TrainingPrompts, training_loader, training_subset
from bench.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from bench.train.distributed import ProcessGroup
from bench.train.evaluate import evaluate
from bench.train.modes import set_training_modes
from bench.train.optim import LearningRateSchedule, build_optimizer
from bench.train.protocol import Protocol
from bench.train.tracking import Tracker
from bench.tuning.base import Method
from bench.tuning.state import save_tuned

BEST_WEIGHTS = "best.safetensors"
SELECTION_METRIC = "AP"


@dataclass(frozen=True)
class TrainingOutcome:
    """What training produced: the selected step and its validation metrics, and throughput."""

    best_step: int
    val: dict[str, float]
    steps: int
    stopped_early: bool
    train_images_per_s: float
    eval_images_per_s: float


def autocast_for(device: torch.device, amp: str) -> tuple[Callable[[], AbstractContextManager], torch.amp.GradScaler | None]:
    """The autocast context factory and (fp16 only) the gradient scaler for ``amp`` on ``device``."""
    mode = ("bf16" if device.type == "cuda" else "none") if amp == "auto" else amp
    if mode == "none":
        return nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def use_deterministic_kernels() -> None:
    """Only deterministic kernels from here on (cuBLAS needs its workspace setting for that)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


@dataclass
class TrainingJob:
    """Everything one training run needs; ``val_set`` already carries the evaluation transform."""

    model: DetectorBase
    method: Method
    trainable: dict[str, nn.Parameter]
    train_set: DetectionDataset
    val_set: DetectionDataset
    dataset: DatasetSpec
    protocol: Protocol
    seed: int
    work_dir: Path
    workers: int = 0
    progress: bool = True
    group: ProcessGroup = ProcessGroup()
    tracker: Tracker | None = None


def train(job: TrainingJob) -> TrainingOutcome:
    """Train (or resume) ``job``, leaving the model with its best-on-validation weights."""
    model, protocol = job.model, job.protocol
    device = next(model.parameters()).device
    autocast, scaler = autocast_for(device, protocol.amp)
    if protocol.deterministic:
        use_deterministic_kernels()
    best_path = job.work_dir / BEST_WEIGHTS
    optimizer = build_optimizer(model, job.trainable, job.method.config, protocol)

    group = job.group

    def validate(step: int) -> tuple[dict[str, float], float]:
        """Rank 0 evaluates; every rank gets its numbers, so all take the same decisions."""
        result = None
        if group.is_main:
            ev = evaluate(model, job.val_set, job.dataset, batch_size=protocol.eval_batch_size, autocast=autocast,
                          progress=f"val @ step {step}" if job.progress else None)
            result = (ev.metrics, ev.images_per_s)
        return group.broadcast(result)

    def log(scalars: dict[str, float], step: int) -> None:
        """Hand ``scalars`` to the tracker, once: from the main process only."""
        if job.tracker is not None and group.is_main:
            job.tracker.log(scalars, step)

    if optimizer is None:  # nothing to train: the base model is the selected one
        metrics, eval_speed = validate(0)
        return TrainingOutcome(0, metrics, 0, False, 0.0, eval_speed)

    train_set = training_subset(job.train_set)
    total = protocol.total_steps(len(train_set))
    interval = protocol.eval_interval(len(train_set))
    schedule = LearningRateSchedule(optimizer, protocol, total)
    counters = {"step": 0, "best_step": 0, "best_val": {}, "last_val": {}, "train_seconds": 0.0, "eval_seconds": 0.0,
                "eval_images": 0, "stopped_early": False}
    resumed = load_checkpoint(job.work_dir / CHECKPOINT, job.trainable)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        counters.update(resumed["counters"])
        if group.is_main:
            print(f"Resuming from step {counters['step']} of {total} (checkpoint in {job.work_dir}).", flush=True)
    elif group.is_main:  # a fresh start: best weights left by an earlier run of this cell are not this run's
        best_path.unlink(missing_ok=True)

    def checkpoint() -> None:
        if not group.is_main:
            return
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "counters": dict(counters)}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(job.work_dir / CHECKPOINT, job.trainable, state)

    prompts = TrainingPrompts(
        train_set.prompt_classes(), model.tokenizer, model.text_slots, job.dataset.chunk_size, model.prompt_style
    )
    start = counters["step"]
    batches = training_loader(
        train_set, model.input_spec, prompts, batch_size=protocol.batch_size, copies=protocol.copies,
        seed=job.seed, start_batch=start * protocol.grad_accumulation,
        num_batches=(total - start) * protocol.grad_accumulation, workers=job.workers,
        rank=group.rank, world_size=group.world_size,
    )
    forward = model
    if group.is_distributed:  # gradients of the trainable tensors are averaged over the processes
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True, broadcast_buffers=False,
        )
    bar = tqdm(total=total, initial=start, desc=f"train {job.method.name} on {job.dataset.name}",
               disable=not job.progress or not group.is_main or counters["stopped_early"], unit="step", leave=False)
    set_training_modes(model, protocol.frozen_modules)
    step = start
    while step < total and not counters["stopped_early"]:
        tick = time.perf_counter()
        schedule.step(step)
        step_loss = torch.zeros((), device=device)  # the mean loss of the step's micro-batches
        for _ in range(protocol.grad_accumulation):
            batch = next(batches)
            targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
            with autocast():
                losses = forward(batch.images.to(device), batch.sizes.to(device), batch.prompts, targets)
            loss = sum(losses.values()) / protocol.grad_accumulation
            (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if protocol.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(job.trainable.values()), protocol.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        counters["step"] = step
        counters["train_seconds"] += time.perf_counter() - tick
        bar.update(1)
        train_loss = float(step_loss)
        bar.set_postfix(loss=f"{train_loss:.3f}")
        log({"train/loss": train_loss, "train/lr": optimizer.param_groups[0]["lr"]}, step)
        if step % interval == 0 or step == total:
            metrics, speed = validate(step)
            log({f"val/{name}": value for name, value in metrics.items() if not math.isnan(value)}, step)
            counters["eval_seconds"] += len(job.val_set) / speed
            counters["eval_images"] += len(job.val_set)
            counters["last_val"] = metrics
            improved = schedule.observe(metrics.get(SELECTION_METRIC, float("nan")))
            if improved and protocol.selection == "best-val":
                counters["best_step"], counters["best_val"] = step, metrics
                if group.is_main:
                    save_tuned(best_path, model, job.method, job.trainable)
            counters["stopped_early"] = protocol.selection == "best-val" and schedule.should_stop()
            set_training_modes(model, protocol.frozen_modules)
            checkpoint()
        elif step % protocol.checkpoint_every == 0:
            checkpoint()
    bar.close()
    group.barrier()  # rank 0's last best weights are on disk before anyone loads them
    if best_path.is_file():
        best = load_file(best_path)
        with torch.no_grad():
            for name, parameter in job.trainable.items():
                parameter.copy_(best[name])
    else:  # selection "last", or no validation score was ever defined: the final weights are the selection
        counters["best_step"], counters["best_val"] = counters["step"], counters["last_val"]
    model.eval()
    return TrainingOutcome(
        best_step=counters["best_step"],
        val=counters["best_val"],
        steps=counters["step"],
        stopped_early=counters["stopped_early"],
        train_images_per_s=counters["step"] * protocol.images_per_step / max(counters["train_seconds"], 1e-9),
        eval_images_per_s=counters["eval_images"] / max(counters["eval_seconds"], 1e-9),
    )
