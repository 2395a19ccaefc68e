"""Warm workers: a process builds and loads a base detector once and gives every cell its own copy.

A local worker process (``--jobs N``) and a SLURM array task run cell after cell; each cell used to
build its detector and read its weights again. :func:`base_model` keeps one pristine model per
process, the last (model, inputs, weights file) asked for, and hands out deep copies: a cell's
method, hooks, caches and checkpointing flags live on its copy and go with it, so a cell computes
the same in a fresh and in a reused process (``tests/test_warm_workers.py``). The tokenizer is
shared, not copied: nothing changes it.

The pristine model is built right after seeding with ``BASE_INIT_SEED`` as before, so a randomly
initialised base is the same in every cell; the copy consumes no random numbers.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from bench.models import ModelInputs, build_model

BASE_INIT_SEED = 0  # randomly initialised bases (tests, --list-sized smoke runs) are the same for every cell

_pristine: dict[tuple, Any] = {}


def _weights_stamp(weights: str | None) -> tuple[int, int] | None:
    """A weights file's size and modification time: a file replaced in place is read again."""
    if weights is None or not os.path.exists(weights):
        return None
    stat = os.stat(weights)
    return stat.st_size, stat.st_mtime_ns


def base_model(name: str, inputs: ModelInputs) -> Any:
    """A fresh copy of the base detector ``name`` built from ``inputs``, built at most once per process
    for consecutive cells of the same model and weights."""
    key = (name, inputs, _weights_stamp(inputs.weights))
    if key not in _pristine:
        _pristine.clear()  # one base at a time: a sweep's cells share one model
        torch.manual_seed(BASE_INIT_SEED)
        _pristine[key] = build_model(name, inputs)
    pristine = _pristine[key]
    return copy.deepcopy(pristine, memo={id(pristine.tokenizer): pristine.tokenizer})


def forget_base_models() -> None:
    """Drop the kept model (tests; a process about to run something else)."""
    _pristine.clear()
