"""Search spaces for ``--tune``: the same width and the same trial points for every method.

A comparison is only fair when every method gets the same tuning budget (VPT's protocol, Jia et al.
2022 §4: every method's learning rate and weight decay searched on a validation split carved from
the training data). Each method declares its search space next to its config through its sourced
defaults, by one rule that is the same for all of them:

* ``lr``: log-uniform over ``[default / 10, default * 10]``, two decades centred on the method's
  sourced default (the config's ``sources`` say where it comes from);
* ``weight_decay``: log-uniform over ``[1e-4, 1e-1]`` for every method (a range rather than a
  factor around the default, since several defaults are 0).

Other learning rates of a config (full fine-tuning's ``text_encoder_lr``, GLIP's ``LANG_LR``) keep
their ratio to ``lr``, so a trial moves the whole optimiser together.

Trial points are positions in the unit cube, the same for every method: one tuned field gets an
even grid in log space that includes both ends (3 trials: ``default / 10``, ``default``,
``default * 10``), several get a Latin hypercube (``scipy.stats.qmc``) drawn with a fixed seed. So
every method is tried at the same relative settings, and equal trial counts mean equal budgets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from bench.errors import BenchError
from bench.tuning.base import Method, MethodConfig

TUNABLE = ("lr", "weight_decay")
LR_DECADES_EACH_SIDE = 1.0
WEIGHT_DECAY_RANGE = (1e-4, 1e-1)
LATIN_HYPERCUBE_SEED = 0
TIED_LR_SUFFIX = "_lr"


@dataclass(frozen=True)
class Dimension:
    """One tuned field, log-uniform over ``[low, high]``."""

    name: str
    low: float
    high: float

    def at(self, position: float) -> float:
        """The value at ``position`` in [0, 1] (0: ``low``, 1: ``high``), rounded to 3 significant digits
        so that values read well in tables and repeat exactly across runs."""
        value = math.exp(math.log(self.low) + position * (math.log(self.high) - math.log(self.low)))
        return float(f"{value:.3g}")

    def describe(self) -> str:
        return f"{self.name} log-uniform [{self.low:.3g}, {self.high:.3g}]"


def parse_tuned_fields(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"lr,weight_decay"`` -> ``("lr", "weight_decay")``; unknown or repeated names are refused."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in TUNABLE]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchError(
            f"--tune {','.join(names) or '(empty)'}: give distinct fields among {', '.join(TUNABLE)}, "
            "e.g. --tune lr or --tune lr,weight_decay."
        )
    return tuple(n for n in TUNABLE if n in names)


def search_space(method: Method, fields: Sequence[str]) -> tuple[Dimension, ...]:
    """The dimensions of ``method``'s search space over ``fields`` (see the module docstring), around
    its config's values; empty for a method that trains nothing (zero-shot)."""
    if not method.trains:
        return ()
    config = method.config
    dimensions = []
    for name in fields:
        if name == "lr":
            factor = 10.0 ** LR_DECADES_EACH_SIDE
            dimensions.append(Dimension("lr", config.lr / factor, config.lr * factor))
        elif name == "weight_decay":
            dimensions.append(Dimension("weight_decay", *WEIGHT_DECAY_RANGE))
        else:
            raise BenchError(f"{name!r} cannot be tuned; tunable fields: {', '.join(TUNABLE)}.")
    return tuple(dimensions)


def unit_points(dimensions: int, trials: int) -> np.ndarray:
    """``[trials, dimensions]`` positions in the unit cube, identical for every method."""
    if trials < 1:
        raise BenchError(f"--tune-trials must be at least 1, got {trials}.")
    if dimensions == 1:
        return np.array([[0.5]]) if trials == 1 else np.linspace(0.0, 1.0, trials)[:, None]
    return qmc.LatinHypercube(d=dimensions, seed=LATIN_HYPERCUBE_SEED).random(trials)


def trial_values(space: Sequence[Dimension], trials: int) -> list[dict[str, float]]:
    """The settings of the ``trials`` trials over ``space`` (none when the space is empty), nearest the
    centre (the sourced default) first, so that a selection's ties go to the default."""
    if not space:
        return []
    points = unit_points(len(space), trials)
    nearest_centre_first = np.argsort(np.linalg.norm(points - 0.5, axis=1), kind="stable")
    return [{d.name: d.at(float(p)) for d, p in zip(space, points[i])} for i in nearest_centre_first]


def with_values(config: MethodConfig, values: Mapping[str, Any]) -> MethodConfig:
    """``config`` with a trial's ``values``; other ``*_lr`` fields keep their ratio to ``lr``."""
    changes = dict(values)
    if "lr" in values and config.lr > 0:
        ratio = values["lr"] / config.lr
        for field in dataclasses.fields(config):
            current = getattr(config, field.name)
            if field.name.endswith(TIED_LR_SUFFIX) and field.name not in changes and isinstance(current, float):
                changes[field.name] = current * ratio
    return dataclasses.replace(config, **changes)
