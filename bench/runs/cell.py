"""Run one cell: build the frozen base, apply the method, train with selection on val, score test.

:func:`run_cell` is what both executors call (in this process, or inside a SLURM array task); its
only output is the record in the run store, written atomically at the very end. A failure is
recorded apart (:meth:`RunStore.save_failure`) and never counts as a result.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bench.catalog import DatasetSpec, load_split_annotations, open_split
from bench.data.coco_format import CocoAnnotations
from bench.data.dataset import DetectionDataset
from bench.devices import pick_device
from bench.data.fewshot import few_shot_subset
from bench.data.holdout import DECLARED, split_off_validation
from bench.errors import BenchError
from bench.runs.captions import used_text_positions, with_fitting_captions
from bench.runs.plan import Cell, RunContext
from bench.runs.fingerprint import FingerprintCache, weights_fingerprint
from bench.runs.record import RESULTS_VERSION, Cost, RunRecord, RunSpec
from bench.runs.pseudo_labels import PSEUDO_LABELS, provenance_of, pseudo_annotations, pseudo_label_file
from bench.runs.resolved import resolved_method, resolved_settings
from bench.runs.retention import score_retention
from bench.runs.store import RunStore
from bench.runs.warm import base_model
from bench.train.checkpoint import checkpoint_files
from bench.train.distributed import join_process_group
from bench.train.evaluate import evaluate, evaluation_dataset
from bench.train.frozen_cache import install_frozen_cache, frozen_cache_summary
from bench.train.loop import BEST_WEIGHTS, TrainingJob, TrainingOutcome, autocast_for, train
from bench.train.meters import PeakMemory
from bench.train.protocol import resolve_protocol
from bench.train.tracking import TrackedRun, tracking
from bench.tuning.accounting import account
from bench.tuning.state import NO_BASE_WEIGHTS, save_tuned

PACKAGES = ("torch", "torchvision", "transformers", "peft", "faster-coco-eval", "pycocotools", "lvis", "numpy")
REPOSITORY = Path(__file__).resolve().parents[2]
SELECTED_WEIGHTS = "selected.safetensors"  # a cell's selected tuned weights (a trial's are reused by its replicate)


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


def training_and_validation(dataset: DatasetSpec, spec: RunSpec, context: RunContext) -> tuple[DetectionDataset, DetectionDataset]:
    """The cell's training set (full, its K-shot sample, or the split the dataset released for K shots)
    and its validation set: the dataset's own validation split, or (``spec.validation`` held out) one
    drawn from the training images that the training set does not use (:mod:`bench.data.holdout`).

    Under ``training_labels: pseudo`` (:mod:`bench.runs.pseudo_labels`) the training images are the
    same, their labels the teacher's; validation keeps the real labels."""
    where = {"cache_root": context.cache_dir}
    split = dataset.training_split(spec.shots)
    real_pool = load_split_annotations(dataset, "train", context.data_root, context.cache_dir) if "train" in dataset.splits else None
    labels = _training_labels(dataset, spec, context)
    if split != "train":
        sample = load_split_annotations(dataset, split, context.data_root, context.cache_dir)
    elif spec.shots is not None:
        sample = few_shot_subset(real_pool, spec.shots, spec.split_seed,
                                 split_dir=dataset.split_paths("train", context.data_root, context.cache_dir)[1].parent)
    else:
        sample = None
    if spec.validation == DECLARED:
        training = _relabelled(sample if sample is not None else real_pool, labels)
        return (open_split(dataset, split, context.data_root, annotations=training, **where),
                open_split(dataset, "val", context.data_root, **where))
    kept, validation = split_off_validation(real_pool, sample)
    return (open_split(dataset, split, context.data_root, annotations=_relabelled(kept, labels), **where),
            open_split(dataset, "train", context.data_root, annotations=validation, **where))


def _training_labels(dataset: DatasetSpec, spec: RunSpec, context: RunContext) -> CocoAnnotations | None:
    """The teacher's pseudo-labels of the training split when the protocol trains on them, else None."""
    protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
    if protocol.training_labels != PSEUDO_LABELS:
        return None
    return pseudo_annotations(pseudo_label_file(dataset, spec.model, spec.weights, protocol, context, make=False))


def _relabelled(images: CocoAnnotations, labels: CocoAnnotations | None) -> CocoAnnotations:
    """``images`` with ``labels``' annotations of the same images (the real ones when ``labels`` is None)."""
    return images if labels is None else labels.subset(images.image_ids)


def finished_trial(spec: RunSpec, store: RunStore) -> RunRecord | None:
    """The stored trial a selected-setting cell may reuse (``tuning["from_trial"]``), if it finished
    and its selected weights are on disk; None means: train."""
    key = spec.tuning.get("from_trial")
    if key is None or key not in store.finished_keys() or not (store.work_dir(key) / SELECTED_WEIGHTS).is_file():
        return None
    record = store.read_result(key)
    return record if record.spec.is_trial else None


def reuse_trial(trial: RunRecord, weights: Path, trainable: dict[str, torch.nn.Parameter]) -> TrainingOutcome:
    """Load the trial's selected weights into ``trainable`` and return the trial's training outcome."""
    tensors = load_file(weights)
    if set(tensors) != set(trainable):
        raise BenchError(f"{weights} does not hold the tensors this method trains; delete it to train this cell afresh.")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(tensors[name])
    cost = trial.cost
    return TrainingOutcome(trial.best_step, dict(trial.val), cost.train_steps, False, cost.train_images_per_s, cost.eval_images_per_s)


def run_metadata(cell: Cell, store: RunStore) -> dict[str, str]:
    """What a cell's tuned state says about the run that made it (:data:`bench.tuning.state.RUN_METADATA`)."""
    fingerprint = weights_fingerprint(cell.spec.weights, FingerprintCache(store.fingerprints_path))  # digested at planning
    return {"run_key": cell.key, "run_spec": json.dumps(cell.spec.to_dict(), sort_keys=True),
            "base_fingerprint": fingerprint or NO_BASE_WEIGHTS}


def run_cell(cell: Cell, context: RunContext) -> RunRecord | None:
    """Train and evaluate one cell, resuming from its checkpoint if one exists; store and return its record.

    Started as several processes (see :mod:`bench.train.distributed`), the processes train
    together and only rank 0 scores the test split and stores the record; the others return None.
    """
    started, tick = datetime.now(timezone.utc), time.perf_counter()
    spec = cell.spec
    store = context.store
    dataset = context.catalog().dataset(spec.dataset)
    settings = resolved_settings(spec, dataset)  # before the captions are fitted to the model: what the key hashed
    protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
    device = pick_device(context.device)
    group = join_process_group(device)
    device = group.device(device)

    train_set, val_split = training_and_validation(dataset, spec, context)
    trained_on = ({"pseudo_labels": provenance_of(pseudo_label_file(dataset, spec.model, spec.weights, protocol, context, make=False))}
                  if protocol.training_labels == PSEUDO_LABELS else {})

    model = base_model(spec.model, context.model_inputs(spec.weights))
    dataset = with_fitting_captions(dataset, train_set, model)
    val_set = evaluation_dataset(val_split, model)
    # A tuning trial never opens the test split: its selection cannot read what it never had.
    test_set = None if spec.is_trial else evaluation_dataset(
        open_split(dataset, "test", context.data_root, cache_root=context.cache_dir), model)
    torch.manual_seed(spec.train_seed)
    method = resolved_method(spec)
    trainable = method.apply(model)
    model.set_activation_checkpointing(protocol.activation_checkpointing)
    if protocol.attention != "default":
        model.set_attention_kernel(protocol.attention)
    accounts = account(model, method, trainable, text_positions=used_text_positions(train_set, model, dataset))
    model.to(device)
    frozen_work = install_frozen_cache(model, context.frozen_cache, store.frozen_cache_dir,
                                       int(context.frozen_cache_gib * 2**30), variant=protocol.attention)

    memory = PeakMemory(device)
    memory.reset()
    trial = finished_trial(spec, store)
    if trial is not None:  # the winning trial of this replicate already trained exactly this
        outcome = reuse_trial(trial, store.work_dir(trial.key) / SELECTED_WEIGHTS, trainable)
    else:
        with tracking(context.log, TrackedRun(cell.key, spec.to_dict(), context.results / "logs")) as tracker:
            outcome = train(
                TrainingJob(model, method, trainable, train_set, val_set, dataset, protocol, spec.train_seed,
                            store.work_dir(cell.key), workers=context.workers, progress=context.progress, group=group,
                            tracker=tracker)
            )
    if not group.is_main:
        return None
    if trainable:  # the weights scored below, kept beside the record (a winning trial's are reused by its replicate)
        save_tuned(store.work_dir(cell.key) / SELECTED_WEIGHTS, model, method, trainable, run_metadata(cell, store))
    test_metrics: dict[str, float] = {}
    retention: dict[str, dict[str, float]] = {}
    eval_speed = outcome.eval_images_per_s
    if test_set is not None:
        autocast, _ = autocast_for(device, protocol.amp)
        test = evaluate(model, test_set, dataset, batch_size=protocol.eval_batch_size, autocast=autocast,
                        progress="test" if context.progress else None)
        test_metrics, eval_speed = test.metrics, test.images_per_s
        if protocol.retention:
            retention = score_retention(model, context.catalog(), spec.model, context.data_root, context.cache_dir,
                                        batch_size=protocol.eval_batch_size, autocast=autocast, progress=context.progress)
    record = RunRecord(
        key=cell.key,
        spec=spec,
        val=outcome.val,
        test=test_metrics,
        best_step=outcome.best_step,
        cost=Cost(
            trainable_params=accounts.allocated,
            effective_params=accounts.effective,
            base_params=accounts.base,
            stored_bytes=accounts.stored_bytes,
            peak_memory_bytes=max(memory.read(), trial.cost.peak_memory_bytes if trial is not None else 0),
            peak_memory_kind=memory.kind,
            train_images_per_s=outcome.train_images_per_s,
            eval_images_per_s=eval_speed,
            train_steps=outcome.steps,
            wall_s=time.perf_counter() - tick,
        ),
        provenance=provenance(device, started) | {"frozen_cache": frozen_cache_summary(context.frozen_cache, frozen_work)}
        | trained_on,
        resolved=settings,
        retention=retention,
    )
    store.save_result(record)
    # The result is stored: the resumable state is spent (a --force rerun must train again, not
    # resume at the last step), and for full fine-tuning it is gigabytes; best.safetensors is now a
    # copy of selected.safetensors.
    for spent in (*checkpoint_files(store.work_dir(cell.key)), store.work_dir(cell.key) / BEST_WEIGHTS):
        spent.unlink(missing_ok=True)
    return record
