"""Detectors behind one interface (:mod:`bench.models.base`); each backend registers itself by name.

``MODELS`` maps a model name (``glip-t``...) to a factory ``(weights=..., tokenizer=...) -> detector``;
``MODEL_INPUT_CHECKS`` maps the same name to a cheap check of those inputs (the weights file against
the architecture on the meta device, the tokenizer folder), which a sweep runs once before its first
cell so that a wrong file is refused before any work, not in every cell.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.registry import Registry

MODELS: Registry = Registry("model")
MODEL_INPUT_CHECKS: Registry = Registry("model")
# Weights shipped with the project, used when a sweep names no --weights (model name -> file).
PACKAGED_WEIGHTS: dict[str, Path] = {}
# The attention kernels a model can be set to (DetectorBase.set_attention_kernel), where not all of
# bench.models.base.ATTENTION_KERNELS (model name -> kernels), so a sweep refuses others before any cell.
ATTENTION_KERNELS_OF: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class ModelInputs:
    """What a detector is built from besides its name: ``weights`` (None: random initialisation,
    only with ``--random-init``), a ``tokenizer`` folder that replaces the model's default
    (``--tokenizer``), and whether a pickled checkpoint may be read (``--allow-unsafe-checkpoint``)."""

    weights: str | None = None
    tokenizer: str | None = None
    allow_unsafe_checkpoint: bool = False

    def factory_arguments(self) -> dict[str, Any]:
        """Keyword arguments for a ``MODELS`` factory: only what differs from the factory's defaults."""
        arguments: dict[str, Any] = {"weights": self.weights}
        if self.tokenizer is not None:
            arguments["tokenizer"] = self.tokenizer
        if self.allow_unsafe_checkpoint:
            arguments["allow_unsafe_checkpoint"] = True
        return arguments


def build_model(name: str, inputs: ModelInputs) -> Any:
    """The registered detector ``name`` built from ``inputs``."""
    return MODELS.get(name)(**inputs.factory_arguments())


def check_model_inputs(name: str, inputs: ModelInputs) -> None:
    """Refuse inputs ``name`` cannot be built from (see ``MODEL_INPUT_CHECKS``), reading as little as possible."""
    MODEL_INPUT_CHECKS.get(name)(inputs)


# Importing a backend registers its models.
from bench.models.glip import model as _glip  # noqa: E402,F401
from bench.models.grounding_dino import model as _grounding_dino  # noqa: E402,F401
