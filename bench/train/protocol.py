"""Training protocols as data: how long, how batched, which schedule, when to evaluate and stop.

A protocol is the same for every method of a comparison (the method contributes only its learning
rate and weight decay), so differences in a leaderboard come from the methods, not from budgets.
Protocols are registered by name; any field can be overridden from the command line
(``--protocol-set epochs=12``), and ``per_shots`` holds the fields that GLIP's recipes change with
the number of shots. Overrides and per-shot changes end up in the run's spec, hence in its key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from bench.errors import BenchError
from bench.registry import Registry
from bench.train.modes import FROZEN_MODULE_MODES

SCHEDULES = ("plateau", "step", "cosine", "constant")
SELECTIONS = ("best-val", "last")
AMP_MODES = ("auto", "bf16", "fp16", "none")


@dataclass(frozen=True)
class Protocol:
    """One training recipe.

    Budget: ``epochs`` passes over the training set repeated ``copies`` times (GLIP's
    ``GENERAL_COPY``), capped at ``max_steps`` optimiser steps when given; one step consumes
    ``batch_size * grad_accumulation`` images. Schedule: linear warm-up over ``warmup_steps`` from
    ``warmup_factor``, then ``plateau`` (learning rate times ``gamma`` after ``step_patience``
    evaluations without a better validation score, never below ``min_lr``; GLIP's
    ``USE_AUTOSTEP``), ``step`` (times ``gamma`` at each fraction of the budget in ``milestones``),
    ``cosine`` (down to ``min_lr``) or ``constant``. Evaluation on the validation split every
    ``eval_every`` steps, or once per epoch when it is None; training stops early after
    ``terminate_patience`` evaluations without improvement (None: never).

    Optimiser (AdamW): each method's lr and weight decay (and, for full fine-tuning, its lower lr for
    the text encoder's own weights); biases get ``bias_lr_factor`` times the lr and no weight decay,
    as GLIP's optimiser does. ``amp``: ``auto`` is bf16 autocast on CUDA and
    full precision on CPU. ``deterministic``: deterministic kernels only (slower on GPU; an error
    names any operation that has none), for runs that must repeat bit for bit on the same hardware.
    ``frozen_modules``: ``eval`` runs dropout and stochastic depth only in modules whose own weights
    train, the same rule for every method (:mod:`bench.train.modes`); ``train`` runs them everywhere.
    ``selection``: ``best-val`` scores the weights that did best on the validation split; ``last``
    scores the final weights (no early stop), for datasets whose only labelled held-out split is
    the test split (COCO val2017, LVIS minival), where choosing on it would leak test data.
    """

    name: str = "custom"
    description: str = ""
    batch_size: int = 4
    grad_accumulation: int = 1
    epochs: int = 12
    copies: int = 1
    max_steps: int | None = None
    schedule: str = "plateau"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1
    step_patience: int = 3
    terminate_patience: int | None = 8
    min_lr: float = 1e-6
    clip_grad_norm: float | None = 1.0
    eval_every: int | None = None
    eval_batch_size: int = 8
    bias_lr_factor: float = 2.0
    amp: str = "auto"
    checkpoint_every: int = 50
    deterministic: bool = False
    selection: str = "best-val"
    frozen_modules: str = "eval"
    per_shots: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise BenchError(f"Protocol {self.name!r}: unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.selection not in SELECTIONS:
            raise BenchError(f"Protocol {self.name!r}: unknown selection {self.selection!r}; valid: {', '.join(SELECTIONS)}.")
        if self.amp not in AMP_MODES:
            raise BenchError(f"Protocol {self.name!r}: unknown amp mode {self.amp!r}; valid: {', '.join(AMP_MODES)}.")
        if self.frozen_modules not in FROZEN_MODULE_MODES:
            raise BenchError(f"Protocol {self.name!r}: frozen_modules must be one of {', '.join(FROZEN_MODULE_MODES)}, got {self.frozen_modules!r}.")
        for name in ("batch_size", "grad_accumulation", "epochs", "copies", "eval_batch_size", "checkpoint_every", "max_steps", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BenchError(f"Protocol {self.name!r}: {name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise BenchError(f"Protocol {self.name!r}: warmup_steps must be 0 or more, got {self.warmup_steps}.")
        if self.max_steps is not None and self.max_steps < self.warmup_steps:
            raise BenchError(
                f"Protocol {self.name!r}: max_steps={self.max_steps} ends the run inside its warm-up of {self.warmup_steps} "
                "steps, so no step would train at the full learning rate; lower warmup_steps or raise max_steps "
                f"(e.g. --protocol-set warmup_steps={max(self.max_steps // 10, 0)})."
            )

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.grad_accumulation

    def steps_per_epoch(self, num_images: int) -> int:
        """Optimiser steps in one pass over ``num_images`` training images repeated ``copies`` times."""
        return max(1, -(-num_images * self.copies // self.images_per_step))

    def total_steps(self, num_images: int) -> int:
        steps = self.epochs * self.steps_per_epoch(num_images)
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    def eval_interval(self, num_images: int) -> int:
        return self.eval_every or self.steps_per_epoch(num_images)

    def for_shots(self, shots_label: str) -> "Protocol":
        """This protocol with its ``per_shots`` changes for ``shots_label`` (``"1"`` ... or ``"full"``) applied."""
        changes = dict(self.per_shots.get(shots_label, {}))
        return dataclasses.replace(self, **changes, per_shots={}) if changes else dataclasses.replace(self, per_shots={})

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Protocol":
        """A copy with ``overrides`` (field name -> value); unknown fields are an error listing the valid ones."""
        valid = {f.name: f for f in dataclasses.fields(self) if f.name not in ("name", "description", "per_shots")}
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise BenchError(f"Unknown protocol field(s) {unknown}; valid fields: {', '.join(valid)}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        for name, value in values.items():
            _check_type(name, valid[name].type, value)
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "per_shots"}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """Reject an override of the wrong type (``--protocol-set batch_size=four``) before any cell runs."""
    kinds = {part.strip().split("[")[0] for part in str(annotation).split("|")}
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (
        (value is None and "None" in kinds)
        or (number and isinstance(value, int) and kinds & {"int", "float"})
        or (number and isinstance(value, float) and "float" in kinds)
        or (isinstance(value, str) and "str" in kinds)
        or (isinstance(value, bool) and "bool" in kinds)
        or (isinstance(value, tuple) and "tuple" in kinds and all(isinstance(v, (int, float)) for v in value))
    ):
        expected = str(annotation).replace(" | ", " or ")
        raise BenchError(f"Protocol field {name} must be {expected}, got {value!r}; e.g. --protocol-set {name}=... with a JSON value.")


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    PROTOCOLS.add(protocol.name, protocol, protocol.description)
    return protocol


def resolve_protocol(name: str, shots_label: str, overrides: Mapping[str, Any] | None = None) -> Protocol:
    """The registered protocol ``name`` for ``shots_label`` with ``overrides`` applied (overrides win)."""
    return PROTOCOLS.get(name).for_shots(shots_label).with_overrides(overrides or {})


# GLIP's ODinW fine-tuning (reference/glip.md §5.3): "K_EPOCHS_COPY" 1_200_8, 3_200_4, 5_200_2, 10_200_1
# and 0_200_1 for full data (patience 2 and 4 there), batch 4, AdamW with GLIP's groups, grad-norm clip 1,
# reduce-on-plateau on val AP, evaluation every epoch, no warm-up.
register_protocol(
    Protocol(
        name="glip-odinw",
        description="GLIP's ODinW fine-tuning: up to 200 epochs over copies, plateau lr, early stop (GLIP recipe)",
        batch_size=4,
        epochs=200,
        step_patience=3,
        terminate_patience=8,
        per_shots={
            "1": {"copies": 8},
            "3": {"copies": 4},
            "5": {"copies": 2},
            "10": {"copies": 1},
            "full": {"copies": 1, "step_patience": 2, "terminate_patience": 4},
        },
    )
)

# SDPT's released COCO recipe (reference/sdpt.md §4): batch 1, 2000 iterations, steps at 0.67/0.89, an
# evaluation every 100 iterations. The released warm-up (2000 iterations) spans the whole run; 10 % is used.
register_protocol(
    Protocol(
        name="sdpt-coco",
        description="SDPT's COCO recipe: batch 1, 2000 steps, lr x0.1 at 67% and 89%, eval every 100 steps",
        batch_size=1,
        epochs=1_000_000,
        max_steps=2000,
        schedule="step",
        warmup_steps=200,
        eval_every=100,
        terminate_patience=None,
        eval_batch_size=4,
        selection="last",
    )
)

# The default benchmark's budget (glip-nano on shapes-odinw-mini, every method with 3 lr trials and 3
# replicates, minutes on a 2-core CPU): 50 steps of batch 4 (4 passes over a 50-image training set),
# cosine, validation at steps 25 and 50, the better of the two scored. Sized to the time budget before
# any result was seen, the same for every method.
register_protocol(
    Protocol(
        name="shapes",
        description="CPU budget for the synthetic suites: 50 steps of batch 4, cosine, validation every 25 steps",
        batch_size=4,
        epochs=1_000_000,
        max_steps=50,
        schedule="cosine",
        warmup_steps=5,
        warmup_factor=0.1,
        eval_every=25,
        terminate_patience=None,
        min_lr=0.0,
    )
)
