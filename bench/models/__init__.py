"""Detectors behind one interface (:mod:`bench.models.base`); each backend registers itself by name.

``MODELS`` maps a model name (``glip-t``...) to a factory ``(weights=..., tokenizer=...) -> detector``.
"""

from pathlib import Path

from bench.registry import Registry

MODELS: Registry = Registry("model")
# Weights shipped with the project, used when a sweep names no --weights (model name -> file).
PACKAGED_WEIGHTS: dict[str, Path] = {}

# Importing a backend registers its models.
from bench.models.glip import model as _glip  # noqa: E402,F401
from bench.models.grounding_dino import model as _grounding_dino  # noqa: E402,F401
