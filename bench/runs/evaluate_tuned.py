"""Score a saved tuned state on its own: ``run_bench.py eval --tuned PATH``.

A cell keeps its selected weights as ``RESULTS/runs/work/<key>/selected.safetensors``
(:mod:`bench.tuning.state`), which names the run that made them and the fingerprint of their base
weights. Scoring them again builds that base, re-applies the stored method and config, loads the
tensors and evaluates exactly as the cell did (its protocol's evaluation batch, precision and
attention kernel; captions fitted to the model the same way), so the test AP equals the record's.
A state is refused on any other base: the same architecture with other weights would load without
error and score something that no run produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.catalog import open_split, require_data
from bench.devices import check_device, pick_device
from bench.errors import BenchError
from bench.models import PACKAGED_WEIGHTS, check_model_inputs
from bench.runs.captions import with_fitting_captions
from bench.runs.fingerprint import FingerprintCache, weights_fingerprint
from bench.runs.plan import RunContext
from bench.runs.record import RunSpec
from bench.runs.warm import base_model
from bench.train.evaluate import Evaluation, evaluate, evaluation_dataset
from bench.train.loop import autocast_for
from bench.train.protocol import resolve_protocol
from bench.tuning.state import NO_BASE_WEIGHTS, RUN_METADATA, load_tuned, tuned_metadata


@dataclass(frozen=True)
class TunedEvaluation:
    """What :func:`evaluate_tuned` scored: the run that made the state, the dataset and split, the metrics."""

    spec: RunSpec
    run_key: str
    dataset: str
    split: str
    evaluation: Evaluation


def evaluate_tuned(path: Path, context: RunContext, dataset: str | None = None, split: str = "test",
                   weights: str | None = None) -> TunedEvaluation:
    """Score the tuned state at ``path`` on ``split`` of ``dataset`` (default: the dataset it was tuned on),
    on the base ``weights`` (default: the weights its run used), after checking every input."""
    metadata = tuned_metadata(path)
    missing = [name for name in RUN_METADATA if name not in metadata]
    if missing:
        raise BenchError(f"The tuned state {path} does not say which run made it (no {', '.join(missing)}): it was saved "
                         "outside a sweep, so its base and protocol are unknown. Pass the selected.safetensors of a "
                         "finished cell (RESULTS/runs/work/<run key>/).")
    spec = RunSpec.from_dict(json.loads(metadata["run_spec"]))
    base = _base_weights(spec, weights, path, metadata["base_fingerprint"], context)
    catalog = context.catalog()
    target = catalog.dataset(dataset or spec.dataset)
    target.split(split)  # an undeclared split is refused with the declared ones
    require_data([target], context.data_root, splits=[split], cache_root=context.cache_dir)
    check_device(context.device)

    model = base_model(spec.model, context.model_inputs(base))
    split_set = open_split(target, split, context.data_root, cache_root=context.cache_dir)
    target = with_fitting_captions(target, split_set, model)
    torch.manual_seed(spec.train_seed)  # as the cell did before applying its method
    load_tuned(path, model)
    protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
    if protocol.attention != "default":
        model.set_attention_kernel(protocol.attention)
    device = pick_device(context.device)
    model.to(device)
    autocast, _ = autocast_for(device, protocol.amp)
    evaluation = evaluate(model, evaluation_dataset(split_set, model), target, batch_size=protocol.eval_batch_size,
                          autocast=autocast, progress=split if context.progress else None)
    return TunedEvaluation(spec, metadata["run_key"], target.name, split, evaluation)


def _base_weights(spec: RunSpec, weights: str | None, path: Path, expected: str, context: RunContext) -> str | None:
    """The base weights to load: ``weights``, else the run's own (or the model's packaged ones), after
    checking that their content is what the state was trained on."""
    if expected == NO_BASE_WEIGHTS:
        if weights is not None:
            raise BenchError(f"The tuned state {path} was trained on a randomly initialised {spec.model} (--random-init), "
                             f"so it fits no --weights; drop --weights {weights}.")
        return None
    chosen = weights or spec.weights or PACKAGED_WEIGHTS.get(spec.model)
    if chosen is None or not Path(chosen).exists():
        raise BenchError(f"The base weights of the tuned state {path} ({chosen}) are not there; pass --weights the "
                         f"{spec.model} weights it was trained on (content fingerprint {expected}).")
    check_model_inputs(spec.model, context.model_inputs(str(chosen)))
    found = weights_fingerprint(str(chosen), FingerprintCache(context.store.fingerprints_path))
    if found != expected:
        raise BenchError(
            f"The tuned state {path} was trained on {spec.model} weights with content fingerprint {expected}, but "
            f"{chosen} has fingerprint {found}: another base. Its tensors would load and score something no run "
            f"produced. Pass --weights the file (or folder) the run used{f' ({spec.weights})' if spec.weights else ''}."
        )
    return str(chosen)


def describe(result: TunedEvaluation) -> str:
    """The result as the CLI prints it: what was scored and every metric in percent."""
    metrics = ", ".join(f"{name} {100 * value:.2f}" for name, value in result.evaluation.metrics.items())
    s = result.spec
    return (f"{s.method_label} tuned on {s.dataset} ({s.model}, shots {s.shots_label}, seed {s.train_seed}; run "
            f"{result.run_key}) scored on {result.dataset} {result.split}: {metrics}")
