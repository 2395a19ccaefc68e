"""Run one cell: build the frozen base, apply the method, train with selection on val, score test.

:func:`run_cell` is what both executors call (in this process, or inside a SLURM array task); its
only output is the record in the run store, written atomically at the very end. A failure is
recorded apart (:meth:`RunStore.save_failure`) and never counts as a result.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.catalog import load_split_annotations, open_split
from bench.data.fewshot import few_shot_subset
from bench.models import MODELS
from bench.runs.plan import Cell, RunContext
from bench.runs.record import RESULTS_VERSION, Cost, RunRecord
from bench.train.checkpoint import CHECKPOINT
from bench.train.distributed import join_process_group
from bench.train.evaluate import evaluate, evaluation_dataset
from bench.train.loop import TrainingJob, autocast_for, train
from bench.train.meters import PeakMemory
from bench.train.protocol import resolve_protocol
from bench.tuning.accounting import account
from bench.tuning.base import build_method

BASE_INIT_SEED = 0  # randomly initialised bases (tests, --list-sized smoke runs) are the same for every cell
PACKAGES = ("torch", "torchvision", "transformers", "peft", "faster-coco-eval", "pycocotools", "lvis", "numpy")
REPOSITORY = Path(__file__).resolve().parents[2]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def provenance(device: torch.device, started: datetime) -> dict[str, Any]:
    """Where and with what a result was produced (not part of the key; see bench.runs.record)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "results_version": RESULTS_VERSION,
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "packages": versions,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "host": socket.gethostname(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_cell(cell: Cell, context: RunContext) -> RunRecord | None:
    """Train and evaluate one cell, resuming from its checkpoint if one exists; store and return its record.

    Started as several processes (see :mod:`bench.train.distributed`), the processes train
    together and only rank 0 scores the test split and stores the record; the others return None.
    """
    started, tick = datetime.now(timezone.utc), time.perf_counter()
    spec = cell.spec
    store = context.store
    dataset = context.catalog().dataset(spec.dataset)
    protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
    device = pick_device(context.device)
    group = join_process_group(device)
    device = group.device(device)

    train_annotations = load_split_annotations(dataset, "train", context.data_root, context.cache_dir)
    if spec.shots is not None:
        train_annotations = few_shot_subset(
            train_annotations, spec.shots, spec.split_seed,
            split_dir=dataset.split_paths("train", context.data_root, context.cache_dir)[1].parent,
        )
    train_set = open_split(dataset, "train", context.data_root, cache_root=context.cache_dir, annotations=train_annotations)

    torch.manual_seed(BASE_INIT_SEED)
    model = MODELS.get(spec.model)(weights=spec.weights)
    val_set = evaluation_dataset(open_split(dataset, "val", context.data_root, cache_root=context.cache_dir), model)
    test_set = evaluation_dataset(open_split(dataset, "test", context.data_root, cache_root=context.cache_dir), model)
    torch.manual_seed(spec.train_seed)
    method = build_method(spec.method, dict(spec.method_options))
    trainable = method.apply(model)
    accounts = account(model, method, trainable)
    model.to(device)

    memory = PeakMemory(device)
    memory.reset()
    outcome = train(
        TrainingJob(model, method, trainable, train_set, val_set, dataset, protocol, spec.train_seed,
                    store.work_dir(cell.key), workers=context.workers, progress=context.progress, group=group)
    )
    if not group.is_main:
        return None
    autocast, _ = autocast_for(device, protocol.amp)
    test = evaluate(model, test_set, dataset, batch_size=protocol.eval_batch_size, autocast=autocast,
                    progress="test" if context.progress else None)
    record = RunRecord(
        key=cell.key,
        spec=spec,
        val=outcome.val,
        test=test.metrics,
        best_step=outcome.best_step,
        cost=Cost(
            trainable_params=accounts.allocated,
            effective_params=accounts.effective,
            base_params=accounts.base,
            stored_bytes=accounts.stored_bytes,
            peak_memory_bytes=memory.read(),
            peak_memory_kind=memory.kind,
            train_images_per_s=outcome.train_images_per_s,
            eval_images_per_s=test.images_per_s,
            train_steps=outcome.steps,
            wall_s=time.perf_counter() - tick,
        ),
        provenance=provenance(device, started),
    )
    store.save_result(record)
    # The result is stored: the resumable state is spent (a --force rerun must train again, not
    # resume at the last step), and for full fine-tuning it is gigabytes. best.safetensors stays.
    (store.work_dir(cell.key) / CHECKPOINT).unlink(missing_ok=True)
    return record
