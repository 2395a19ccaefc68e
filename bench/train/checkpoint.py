"""Resumable training state: trained tensors, optimiser, schedule, random generators, progress.

Written atomically (temporary file, fsync, rename) every few steps, so a run killed at any moment
restarts from its last checkpoint and, because batches and augmentation are a function of the step
(:mod:`bench.train.batches`), ends exactly as an uninterrupted run would.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.files import write_atomically

CHECKPOINT = "checkpoint.pt"


def random_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, trainable: dict[str, nn.Parameter], state: dict[str, Any]) -> None:
    """``state`` holds the optimiser's and schedule's state dicts and the loop's own counters."""
    payload = {"tensors": {n: p.detach().cpu() for n, p in trainable.items()}, "random": random_states(), **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, buffer.getvalue())


def load_checkpoint(path: Path, trainable: dict[str, nn.Parameter]) -> dict[str, Any] | None:
    """Restore the tensors and random generators from ``path``; returns the rest, or None without a file."""
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(payload["tensors"][name])
    restore_random_states(payload.pop("random"))
    payload.pop("tensors")
    return payload
