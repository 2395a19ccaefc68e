"""What one run is (:class:`RunSpec`) and what it leaves behind (:class:`RunRecord`).

A run is a pure function of its spec: the model and its weights, the method and its options, the
dataset, the few-shot split and the training protocol. Its key hashes the spec together with the
resolved method config and protocol (:mod:`bench.runs.resolved`: every default filled in), the
fingerprints of the weights and the data and :data:`RESULTS_VERSION`, so a result is reused only
when everything that determines it is the same, and a changed default makes new keys by itself.
Paths (``--data-root``, where the weights live) are not part of the key; the fingerprints of what
they point to are.

``RESULTS_VERSION`` is bumped by a change to what the code computes from the same settings (a model
fix, a new augmentation); the git commit is recorded in each result's provenance but is not part of
the key, so unrelated commits do not invalidate finished work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from bench.data.holdout import DECLARED
from bench.errors import BenchError

RESULTS_VERSION = 3  # 3: training boxes clamped to their image, mostly-outside ones left out
RECORD_FORMAT = 2  # 2: the resolved method config, protocol and catalog entry (``resolved``)
LEGACY_RECORD_FORMATS = (1,)  # read, with ``resolved`` empty: they were made before it was stored
FULL_DATA = "full"
TRIAL = "trial"
SELECTED = "selected"
RANDOM_INIT = "(random init)"


def shots_label(shots: int | None) -> str:
    """``"full"`` for the whole training split, else the number of shots as text."""
    return FULL_DATA if shots is None else str(shots)


@dataclass(frozen=True)
class RunSpec:
    """One cell of a sweep.

    ``shots``: K of a K-shot training split, or None for the full training split. ``split_seed``:
    the seed of the few-shot sampler (None: GLIP's deterministic sampler); unused with full data.
    ``train_seed``: initialisation of the method's modules, data order and augmentation.
    ``protocol``: the training protocol's name and ``protocol_overrides`` its changed fields.
    ``tuning``: empty for a run with the method's options as given; for ``--tune``
    (:mod:`bench.runs.tuning`) ``{"stage": "trial", "values": {...}}`` for a trial, which is scored on
    validation only, or ``{"stage": "selected", "values": {...}, ...}`` with how the values were
    selected. ``values`` change the method's config without changing its leaderboard row.
    ``validation``: where the validation split comes from, the dataset's own (``"split"``) or held
    out from its training images (:mod:`bench.data.holdout`), for datasets whose validation is their test.
    """

    model: str
    method: str
    dataset: str
    weights: str | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    shots: int | None = None
    split_seed: int | None = None
    train_seed: int = 0
    protocol: str = "default"
    protocol_overrides: Mapping[str, Any] = field(default_factory=dict)
    tuning: Mapping[str, Any] = field(default_factory=dict)
    validation: str = DECLARED

    @property
    def is_trial(self) -> bool:
        """A tuning trial: trained and scored on validation only, never on test."""
        return self.tuning.get("stage") == TRIAL

    @property
    def tuned_values(self) -> dict[str, Any]:
        """The option values set by tuning (a trial's, or the selected ones), else empty."""
        return dict(self.tuning.get("values", {}))

    @property
    def model_label(self) -> str:
        """The model as a leaderboard shows it: a randomly initialised one (``--random-init``) says so."""
        return self.model if self.weights is not None else f"{self.model} {RANDOM_INIT}"

    @property
    def shots_label(self) -> str:
        """``"full"`` or the number of shots as text (tables and file names)."""
        return shots_label(self.shots)

    @property
    def method_label(self) -> str:
        """The method and its non-default options, e.g. ``sdpt[num_tokens=8]``: one leaderboard row."""
        if not self.method_options:
            return self.method
        options = ",".join(f"{k}={_compact(v)}" for k, v in sorted(self.method_options.items()))
        return f"{self.method}[{options}]"

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["method_options"] = dict(sorted(self.method_options.items()))
        values["protocol_overrides"] = dict(sorted(self.protocol_overrides.items()))
        values["tuning"] = json.loads(json.dumps(self.tuning, sort_keys=True))
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise BenchError(f"Unknown run-spec field(s) {unknown}; valid fields: {sorted(names)}.")
        return cls(**dict(values))

    def key(self, weights_fingerprint: str | None, data_fingerprint: str, settings: Mapping[str, Any]) -> str:
        """The run key: a hash of the spec, its resolved ``settings``
        (:func:`bench.runs.resolved.keyed_settings`), the fingerprints and :data:`RESULTS_VERSION`."""
        payload = {
            "spec": self.to_dict() | {"weights": None},
            "settings": settings,
            "weights": weights_fingerprint,
            "data": data_fingerprint,
            "results_version": RESULTS_VERSION,
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _compact(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Cost:
    """What a run cost. ``peak_memory_bytes`` is CUDA's max allocated on GPU and the peak resident
    set size of the process on CPU (``peak_memory_kind`` says which)."""

    trainable_params: int
    effective_params: int
    base_params: int
    stored_bytes: int
    peak_memory_bytes: int
    peak_memory_kind: str
    train_images_per_s: float
    eval_images_per_s: float
    train_steps: int
    wall_s: float

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.base_params if self.base_params else math.nan


@dataclass(frozen=True)
class RunRecord:
    """A finished run as stored in ``<results>/runs/done/<key>.json``.

    ``val``: metrics of the selected (best-on-validation) weights on the validation split; ``test``:
    the same weights scored once on the test split (empty for a tuning trial, which never sees test). Metric names are the evaluator's (``AP``,
    ``AP50`` ... as fractions in [0, 1]; NaN where undefined). ``best_step``: the training step of
    the selected weights (0 for methods that do not train). ``resolved``: the method config, protocol
    and catalog entry the run resolved to (:func:`bench.runs.resolved.resolved_settings`).
    ``retention``: with the protocol's ``retention`` on, the same weights' test metrics on each
    dataset of the model's retention set (:mod:`bench.runs.retention`); empty otherwise.
    """

    key: str
    spec: RunSpec
    val: Mapping[str, float]
    test: Mapping[str, float]
    best_step: int
    cost: Cost
    provenance: Mapping[str, Any]
    resolved: Mapping[str, Any] = field(default_factory=dict)
    retention: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        payload = {
            "format": RECORD_FORMAT,
            "key": self.key,
            "spec": self.spec.to_dict(),
            "metrics": {"val": dict(self.val), "test": dict(self.test), "best_step": self.best_step}
            | ({"retention": {name: dict(values) for name, values in self.retention.items()}} if self.retention else {}),
            "cost": dataclasses.asdict(self.cost) | {"trainable_percent": self.cost.trainable_percent},
            "provenance": dict(self.provenance),
            "resolved": dict(self.resolved),
        }
        return json.dumps(payload, indent=1, sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        """Parse a stored record; any missing or malformed part raises ``ValueError``/``KeyError``/``TypeError``."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, found a {type(data).__name__}")
        if data.get("format") not in (RECORD_FORMAT, *LEGACY_RECORD_FORMATS):
            raise ValueError(f"record format {data.get('format')!r}, expected {RECORD_FORMAT}")
        try:
            cost = dict(data["cost"])
            cost.pop("trainable_percent", None)
            metrics = data["metrics"]
            return cls(
                key=str(data["key"]),
                spec=RunSpec.from_dict(data["spec"]),
                val={k: float(v) for k, v in metrics["val"].items()},
                test={k: float(v) for k, v in metrics["test"].items()},
                best_step=int(metrics["best_step"]),
                cost=Cost(**cost),
                provenance=dict(data["provenance"]),
                resolved=dict(data["resolved"]) if data["format"] == RECORD_FORMAT else {},
                retention={name: {k: float(v) for k, v in values.items()}
                           for name, values in metrics.get("retention", {}).items()},
            )
        except AttributeError as err:  # a part of the wrong JSON type, e.g. a list where an object belongs
            raise ValueError(f"malformed record: {err}") from None
