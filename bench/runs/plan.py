"""From a sweep request (methods x datasets x shots x seeds) to keyed cells, and which are done.

Planning reads no images and builds no model: it resolves names (unknown ones fail here, before any
work), fingerprints the weights and annotation files (cached), and hashes each cell's spec into its
run key, so a ``--dry-run`` over thousands of cells takes seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.catalog import Catalog, DatasetSpec, require_data
from bench.data.holdout import DECLARED, HELD_OUT, validation_is_test
from bench.errors import BenchError
from bench.models import ATTENTION_KERNELS_OF, MODELS, PACKAGED_WEIGHTS, ModelInputs, check_model_inputs
from bench.runs.fingerprint import FingerprintCache, dataset_fingerprint, file_sha256, weights_fingerprint
from bench.runs.lease import Leases, Owner
from bench.runs.record import RunSpec, shots_label
from bench.runs.resolved import keyed_settings, resolved_method, resolved_settings
from bench.runs.pseudo_labels import PSEUDO_LABELS, pseudo_label_file
from bench.runs.retention import require_retention_data
from bench.runs.store import RunStore
from bench.train.protocol import PROTOCOLS, resolve_protocol
from bench.tuning.base import build_method


@dataclass(frozen=True)
class RunContext:
    """Where a run finds its inputs and puts its outputs; none of it changes a run's result."""

    results: Path = Path("results")
    data_root: Path | None = None
    cache_dir: Path | None = None
    catalog_dir: Path | None = None
    device: str = "auto"
    workers: int = 0
    progress: bool = True
    tokenizer: str | None = None
    allow_unsafe_checkpoint: bool = False
    frozen_cache: str = "disk"  # bench.train.frozen_cache: off, memory (per process) or disk (shared by cells)
    frozen_cache_gib: float = 8.0
    log: str = "off"  # bench.train.tracking: off, or a tracker kind writing curves below results/logs/

    def model_inputs(self, weights: str | None) -> ModelInputs:
        """What the model of a cell with base ``weights`` is built from (see :class:`ModelInputs`)."""
        return ModelInputs(weights, self.tokenizer, self.allow_unsafe_checkpoint)

    @property
    def store(self) -> RunStore:
        return RunStore(self.results / "runs")

    def catalog(self) -> Catalog:
        return Catalog.with_user_folder(self.catalog_dir)


@dataclass(frozen=True)
class SweepRequest:
    """What the user asked for. ``seeds`` are training seeds; ``split_seeds`` None pairs each training
    seed with the same few-shot split seed (so replicates vary both), otherwise the two are crossed."""

    model: str
    methods: Sequence[str]
    datasets: Sequence[str]
    weights: str | None = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shots: Sequence[int | None] = (None,)
    seeds: Sequence[int] = (0,)
    split_seeds: Sequence[int | None] | None = None
    protocol: str = "glip-odinw"
    protocol_overrides: Mapping[str, Any] = field(default_factory=dict)
    random_init: bool = False


@dataclass(frozen=True)
class Cell:
    """A keyed cell of a sweep. ``rerun``: run it even when a result is stored (``--force``); otherwise
    a cell that another runner finished after this sweep was planned is not run again."""

    spec: RunSpec
    key: str
    rerun: bool = False


def validate_request(request: SweepRequest) -> None:
    """Resolve every name and option once, so a typo fails before anything runs."""
    MODELS.get(request.model)
    PROTOCOLS.get(request.protocol)
    for name in request.method_options:
        if name not in request.methods:
            raise BenchError(f"Options were given for the method {name!r}, which is not in --methods ({', '.join(request.methods)}).")
    for name in request.methods:
        build_method(name, dict(request.method_options.get(name, {})))
    for shots in request.shots:
        if shots is not None and shots < 1:
            raise BenchError(f"Shots must be positive integers or 'full'; got {shots}.")
        protocol = resolve_protocol(request.protocol, shots_label(shots), request.protocol_overrides)
        kernels = ATTENTION_KERNELS_OF.get(request.model)
        if protocol.attention != "default" and kernels is not None and protocol.attention not in kernels:
            raise BenchError(f"{request.model} computes attention only as {', '.join(kernels)}, not as "
                             f"attention={protocol.attention!r} (see DetectorBase.set_attention_kernel); leave the "
                             f"protocol's attention at default or use --protocol-set attention={kernels[0]}.")


def check_training_splits(request: SweepRequest, specs: Sequence[DatasetSpec]) -> None:
    """Refuse shots a dataset has no training data for: full data or a drawn K-shot sample needs its
    ``train`` split, which a dataset that releases only K-shot splits (CD-FSOD) does not declare."""
    for spec in specs:
        if "train" in spec.splits:
            continue
        wanted = [shots for shots in request.shots if shots not in spec.released_shots]
        if wanted:
            released = ", ".join(str(k) for k in spec.released_shots) or "none"
            raise BenchError(
                f"Dataset {spec.name!r} has no full training split, only the splits released for {released} shot(s), "
                f"so it cannot be trained at shots {', '.join(shots_label(k) for k in wanted)}. Pass --shots with those "
                f"values (e.g. --shots {','.join(str(k) for k in spec.released_shots)}), or leave the dataset out.")


def held_out_validation(request: SweepRequest, specs: Sequence[DatasetSpec], context: RunContext,
                        tuned: bool = False) -> frozenset[str]:
    """The datasets whose validation must be held out of their training images: those whose validation
    file is their test file, when the sweep selects on validation (``best-val`` weights or, ``tuned``,
    hyper-parameters), which would otherwise choose on test data. With ``selection: last`` and no
    tuning nothing is selected, so they keep their declared split (GLIP's setting)."""
    selections = {resolve_protocol(request.protocol, shots_label(s), request.protocol_overrides).selection
                  for s in request.shots}
    if "best-val" not in selections and not tuned:
        return frozenset()
    return frozenset(spec.name for spec in specs if "val" in spec.splits and "test" in spec.splits and validation_is_test(
        spec.split_paths("val", context.data_root, context.cache_dir)[1],
        spec.split_paths("test", context.data_root, context.cache_dir)[1]))


def resolve_weights(request: SweepRequest) -> str | None:
    """The weights of the request (a checkpoint file or a ``from_pretrained`` folder): ``--weights``,
    else the model's packaged weights, else None (random initialisation), which only ``--random-init``
    allows: a randomly initialised detector is a speed study, never a silent stand-in for a trained one."""
    if request.random_init:
        if request.weights is not None:
            raise BenchError(f"--random-init and --weights {request.weights} contradict each other: pass one of them.")
        return None
    path = request.weights or PACKAGED_WEIGHTS.get(request.model)
    if path is None:
        raise BenchError(
            f"--model {request.model} needs its weights: pass --weights, the checkpoint file (GLIP: e.g. "
            "glip_tiny_model_o365_goldg.pth from the GLIP model zoo) or the from_pretrained folder (Grounding DINO: e.g. "
            "a download of IDEA-Research/grounding-dino-tiny); README.md says where to get them. To time a randomly "
            "initialised model instead (speed and memory studies), pass --random-init; its results say so."
        )
    if not Path(path).exists():
        raise BenchError(
            f"The weights path {path} does not exist. Pass --weights the model's checkpoint file (GLIP: e.g. "
            "glip_tiny_model_o365_goldg.pth from the GLIP model zoo) or its from_pretrained folder (Grounding DINO: "
            "e.g. a download of IDEA-Research/grounding-dino-tiny); README.md says where to get them. "
            "glip-nano's packaged weights are made by `python -m bench.pretrain`."
        )
    return str(Path(path).resolve())


@dataclass(frozen=True)
class PlanInputs:
    """What every cell of a request shares, resolved once: datasets, their fingerprints, the weights."""

    request: SweepRequest
    datasets: tuple[DatasetSpec, ...]
    data_fingerprints: Mapping[str, str]
    weights: str | None
    weights_fingerprint: str | None
    held_out: frozenset[str] = frozenset()

    def cell(self, method: str, dataset: str, shots: int | None, split_seed: int | None, train_seed: int,
             tuning: Mapping[str, Any] | None = None) -> Cell:
        """The keyed cell of ``method`` on ``dataset`` at these seeds (``tuning``: see RunSpec)."""
        request = self.request
        run = RunSpec(
            model=request.model,
            weights=self.weights,
            method=method,
            method_options=dict(request.method_options.get(method, {})),
            dataset=dataset,
            shots=shots,
            split_seed=split_seed,
            train_seed=train_seed,
            protocol=request.protocol,
            protocol_overrides=dict(request.protocol_overrides),
            tuning=dict(tuning or {}),
            validation=HELD_OUT if dataset in self.held_out else DECLARED,
        )
        settings = keyed_settings(resolved_settings(run, self.dataset(dataset)),
                                  resolved_method(run).config.keyed_when_set)
        return Cell(run, run.key(self.weights_fingerprint, self.data_fingerprints[dataset], settings))

    def dataset(self, name: str) -> DatasetSpec:
        return next(spec for spec in self.datasets if spec.name == name)


def prepare(request: SweepRequest, context: RunContext, catalog: Catalog | None = None, tuned: bool = False,
            check_images: bool = False) -> PlanInputs:
    """Check the request (names, options, device-independent inputs: weights, data) and fingerprint
    what its cells share (``tuned``: hyper-parameters will be selected on validation). Every check
    comes before anything is written to the results folder. ``check_images``: the data check that
    reads every image header (:func:`bench.catalog_check.check_datasets`), not only the files' presence."""
    validate_request(request)
    catalog = catalog or context.catalog()
    specs: list[DatasetSpec] = [catalog.dataset(name) for name in request.datasets]
    check_training_splits(request, specs)
    if any(resolve_protocol(request.protocol, shots_label(s), request.protocol_overrides).retention for s in request.shots):
        require_retention_data(catalog, request.model, context.data_root, context.cache_dir)
    held_out = held_out_validation(request, specs, context, tuned)
    weights = resolve_weights(request)
    check_model_inputs(request.model, context.model_inputs(weights))  # once per sweep, before any cell
    if check_images:
        from bench.catalog_check import check_datasets

        print("Checking the data (--check-data=full also decodes every image) ...", flush=True)
        check_datasets(specs, context.data_root, context.cache_dir, progress=context.progress)
    else:
        require_data(specs, context.data_root, cache_root=context.cache_dir)
    cache = FingerprintCache(context.store.fingerprints_path)
    data = {
        spec.name: dataset_fingerprint(
            spec, {s: spec.split_paths(s, context.data_root, context.cache_dir)[1] for s in spec.splits}, cache
        )
        for spec in specs
    }
    weights_digest = weights_fingerprint(weights, cache)
    cache.save()
    for name, labels in pseudo_labels(request, specs, weights, context).items():  # their content is part of the key
        data[name] = hashlib.sha256(f"{data[name]}:{file_sha256(labels)}".encode()).hexdigest()[:20]
    return PlanInputs(request, tuple(specs), data, weights, weights_digest, held_out)


def pseudo_labels(request: SweepRequest, specs: Sequence[DatasetSpec], weights: str | None, context: RunContext) -> dict[str, Path]:
    """The pseudo-label file of each dataset when the request trains on pseudo-labels (made now, before
    any cell: :mod:`bench.runs.pseudo_labels`), by dataset name; none otherwise."""
    protocols = [resolve_protocol(request.protocol, shots_label(s), request.protocol_overrides) for s in request.shots]
    pseudo = [p for p in protocols if p.training_labels == PSEUDO_LABELS]
    if not pseudo:
        return {}
    if len({(p.pseudo_label_teacher, p.pseudo_label_threshold) for p in pseudo}) > 1:
        raise BenchError("The protocol's pseudo-label teacher or threshold differs between shots; set them once with --protocol-set.")
    lacking = [spec.name for spec in specs if "train" not in spec.splits]
    if lacking:
        raise BenchError(f"training_labels=pseudo relabels a dataset's training split, which {', '.join(lacking)} do(es) not "
                         "declare (they release only K-shot splits); leave them out of a self-training sweep.")
    return {spec.name: pseudo_label_file(spec, request.model, weights, pseudo[0], context) for spec in specs}


def seed_pairs(request: SweepRequest, method: str, shots: int | None, dataset: DatasetSpec) -> list[tuple[int | None, int]]:
    """The (split seed, training seed) replicates of ``method`` at ``shots`` on ``dataset``.

    A method that trains nothing (zero-shot) is deterministic and reads no training split, so it gets
    one cell, whatever the seeds. Full data has no split to draw, nor has a split the dataset released
    for these shots (CD-FSOD's). Otherwise ``split_seeds`` None pairs each training seed with the same
    split seed, and given split seeds are crossed with the seeds.
    """
    if not method_trains(request, method):
        return [(None, request.seeds[0])]
    if shots is None or shots in dataset.released_shots:
        return [(None, s) for s in request.seeds]
    if request.split_seeds is None:
        return [(s, s) for s in request.seeds]
    return list(itertools.product(request.split_seeds, request.seeds))


def method_trains(request: SweepRequest, method: str) -> bool:
    """Whether ``method`` (with the request's options for it) trains anything; zero-shot does not."""
    return build_method(method, dict(request.method_options.get(method, {}))).trains


def replicate_cells(inputs: PlanInputs, methods: Sequence[str]) -> list[Cell]:
    """Every replicate of ``methods`` on every dataset and shots, untuned, in that order, no repeats."""
    request = inputs.request
    return unique([
        inputs.cell(method, spec.name, shots, split_seed, train_seed)
        for method, spec, shots in itertools.product(methods, inputs.datasets, request.shots)
        for split_seed, train_seed in seed_pairs(request, method, shots, spec)
    ])


def plan_cells(request: SweepRequest, context: RunContext, catalog: Catalog | None = None,
               check_images: bool = False) -> list[Cell]:
    """Every cell of an untuned request with its run key, in method, dataset, shots, seed order."""
    inputs = prepare(request, context, catalog, check_images=check_images)
    return replicate_cells(inputs, request.methods)


def unique(cells: Sequence[Cell]) -> list[Cell]:
    """``cells`` without repeats (a name given twice is one cell), in order."""
    return list({cell.key: cell for cell in cells}.values())


def running_cells(cells: Sequence[Cell], store: RunStore) -> dict[str, Owner]:
    """Of ``cells``, those another runner is running now (a live lease, :mod:`bench.runs.lease`), with
    their owners: a sweep leaves them to it instead of starting a second copy."""
    return Leases(store.leases_dir).running(cell.key for cell in cells)


def missing_cells(cells: Sequence[Cell], store: RunStore, force: bool = False) -> list[Cell]:
    """The cells without a readable stored result (all of them with ``force``).

    A result file that does not read as its run's record is no result: its cell is run again (and
    the file replaced), with a warning naming the file.
    """
    if force:
        return [dataclasses.replace(cell, rerun=True) for cell in cells]
    listed = store.finished_keys()
    done = store.readable_results(cell.key for cell in cells if cell.key in listed)
    return [cell for cell in cells if cell.key not in done]
