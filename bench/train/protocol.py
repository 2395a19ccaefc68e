"""Training protocols as data: how long, how batched, which schedule, when to evaluate and stop.

A protocol is the same for every method of a comparison (the method contributes only its learning
rate and weight decay), so differences in a leaderboard come from the methods, not from budgets.
Protocols are registered by name; any field can be overridden from the command line
(``--protocol-set epochs=12``), and ``per_shots`` holds the fields that GLIP's recipes change with
the number of shots. Overrides and per-shot changes end up in the run's spec, hence in its key.

Every field is checked when a protocol is built (:mod:`bench.options`): against its annotation, and
numbers against :data:`LIMITS`, so a bad ``--protocol-set`` value is refused before any cell runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from bench.errors import BenchError
from bench.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, OptionValueError, Range, check_fields
from bench.registry import Registry

Schedule = Literal["plateau", "step", "cosine", "constant"]
Selection = Literal["best-val", "last"]
AmpMode = Literal["auto", "bf16", "fp16", "none"]
Attention = Literal["default", "eager", "sdpa"]  # "default" or bench.models.base.ATTENTION_KERNELS
Checkpointing = Literal["off", "official", "all"]  # bench.models.base.CHECKPOINTING_LEVELS as a type
TrainingLabels = Literal["annotated", "pseudo"]
FrozenModules = Literal["eval", "train"]  # bench.train.modes.FROZEN_MODULE_MODES as a type (a test keeps them equal)

# The range of every numeric field (of each item, for milestones).
LIMITS: Mapping[str, Range] = {
    "batch_size": AT_LEAST_ONE, "grad_accumulation": AT_LEAST_ONE, "epochs": AT_LEAST_ONE, "copies": AT_LEAST_ONE,
    "max_steps": AT_LEAST_ONE, "eval_every": AT_LEAST_ONE, "eval_batch_size": AT_LEAST_ONE, "checkpoint_every": AT_LEAST_ONE,
    "warmup_steps": NON_NEGATIVE,
    "warmup_factor": Range(0, 1),  # the warm-up starts at this fraction of the rate
    "milestones": Range(0, 1, low_open=True, high_open=True),  # fractions of the budget
    "gamma": Range(0, 1, low_open=True),  # a decay: 1 keeps the rate
    "step_patience": NON_NEGATIVE,  # 0: decay at every evaluation without improvement
    "terminate_patience": AT_LEAST_ONE,  # 0 would stop at the first evaluation
    "min_lr": NON_NEGATIVE,
    "clip_grad_norm": POSITIVE,
    "bias_lr_factor": POSITIVE,
    "pseudo_label_threshold": Range(0, 1),  # a detection score
}


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
    ``activation_checkpointing``: which activations the backward pass recomputes instead of keeping
    (:meth:`DetectorBase.set_activation_checkpointing`): ``official`` what the detector's official
    training code recomputes (GLIP: the fusion blocks), ``all`` everything the backend can (GLIP:
    every DyHead module and Swin block), ``off`` nothing. It trades memory for time and changes no
    number, so it is not part of a run's key unless set with ``--protocol-set``.
    ``attention``: ``default`` leaves each detector's attention as it is built (GLIP: the official
    computation; Grounding DINO: as transformers builds it); ``eager`` or ``sdpa`` set it
    (:meth:`DetectorBase.set_attention_kernel`: ``sdpa`` uses fused kernels wherever they compute the
    same function, which changes numbers by float rounding and saves the attention maps' memory).
    ``selection``: ``best-val`` scores the weights that did best on the validation split (held out of
    the training images where a dataset's validation is its test, :mod:`bench.data.holdout`);
    ``last`` scores the final weights of a fixed budget (no early stop), as SDPT's COCO recipe does.
    ``retention``: also score the selected weights on the model's retention set (its entry in
    ``datasets/models.yaml``), to measure what tuning cost the model's open-vocabulary ability;
    off by default, since for real detectors it costs a COCO evaluation per cell.
    ``training_labels``: ``pseudo`` trains on a teacher's detections instead of the training split's
    annotations (the self-training scenario, :mod:`bench.runs.pseudo_labels`): the teacher is
    ``pseudo_label_teacher`` (``zero-shot``: the sweep's base; or a cell's ``selected.safetensors``) and
    its detections scoring at least ``pseudo_label_threshold`` become the labels.
    """

    name: str = "custom"
    description: str = ""
    batch_size: int = 4
    grad_accumulation: int = 1
    epochs: int = 12
    copies: int = 1
    max_steps: int | None = None
    schedule: Schedule = "plateau"
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
    amp: AmpMode = "auto"
    checkpoint_every: int = 50
    deterministic: bool = False
    selection: Selection = "best-val"
    frozen_modules: FrozenModules = "eval"
    activation_checkpointing: Checkpointing = "official"
    attention: Attention = "default"
    retention: bool = False
    training_labels: TrainingLabels = "annotated"
    pseudo_label_teacher: str = "zero-shot"
    pseudo_label_threshold: float = 0.5
    per_shots: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, LIMITS, owner=f"Protocol {self.name!r}", setting="--protocol-set {option}")
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
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f"Did you mean {close[0]}? " if close else ""
            if {"lr", "weight_decay"} & set(unknown):  # the method contributes these (module docstring)
                hint += "The learning rate and weight decay are each method's own: --method-set METHOD.lr=VALUE. "
            raise BenchError(f"Unknown protocol field(s) {unknown}; valid fields: {', '.join(valid)}. {hint}"
                             f"Set one with --protocol-set KEY=VALUE, e.g. --protocol-set batch_size={self.batch_size}.")
        try:
            return dataclasses.replace(self, **overrides)
        except OptionValueError as error:  # say it again with this protocol's value as the example
            bad = error.bad
            message = bad.message(f"Protocol {self.name!r}", f"--protocol-set {bad.option}", getattr(self, bad.option),
                                  f"the value of protocol {self.name!r}")
            raise OptionValueError(message, bad) from None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "per_shots"}


UNKEYED_PROTOCOL_FIELDS = frozenset({"description", "activation_checkpointing"})
KEYED_WHEN_SET = {"retention": False, "training_labels": "annotated", "pseudo_label_teacher": "zero-shot",
                  "pseudo_label_threshold": 0.5}
"""Protocol fields added after results existed, keyed only when they differ from this value, so that
adding them changed no run key (:func:`bench.runs.resolved.keyed_settings`)."""
"""Protocol fields that change no number a run computes (prose; what the backward pass recomputes), so
their defaults are not part of a run key (:mod:`bench.runs.resolved`); set with ``--protocol-set``
they are, through the spec's overrides."""

PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    PROTOCOLS.add(protocol.name, protocol, protocol.description)
    return protocol


def resolve_protocol(name: str, shots_label: str, overrides: Mapping[str, Any] | None = None) -> Protocol:
    """The registered protocol ``name`` for ``shots_label`` with ``overrides`` applied (overrides win)."""
    return PROTOCOLS.get(name).for_shots(shots_label).with_overrides(overrides or {})


# GLIP's ODinW fine-tuning (microsoft/GLIP README, "ODinW / Custom Dataset Fine-Tuning", and tools/finetune.py):
# --custom_shot_and_epoch_and_general_copy 1_200_8, 3_200_4, 5_200_2, 10_200_1 and 0_200_1 for full data
# (patience 2 and 4 there), batch 4, AdamW with GLIP's groups, grad-norm clip 1, reduce-on-plateau on val AP,
# evaluation every epoch, no warm-up.
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

# SDPT's released COCO recipe (wuyongjianCODE/SDPT README training command, on configs/pretrain/glip_Swin_L.yaml):
# batch 1, 2000 iterations, steps at 0.67/0.89, an evaluation every 100 iterations. The released warm-up
# (2000 iterations) spans the whole run; 10 % is used.
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
        activation_checkpointing="off",  # glip-nano's activations are small; recomputing them only costs time
    )
)
