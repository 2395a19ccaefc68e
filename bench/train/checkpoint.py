"""Resumable training state: trained tensors, optimiser, schedule, random generators, progress.

Written atomically (temporary file, fsync, rename) every few steps, so a run killed at any moment
restarts from its last checkpoint and, because batches and augmentation are a function of the step
(:mod:`bench.train.batches`), ends exactly as an uninterrupted run would.

A rename protects against a process killed mid-write, not against what happens to a file after it
was written (a disk or network file system that loses or garbles blocks, a copy cut short). So each
checkpoint starts with the SHA-256 of its content, and the one before it is kept as
``checkpoint.prev.pt``: a checkpoint that does not match its checksum is set aside with that said,
and the run resumes from the previous one, or from scratch when that one is damaged too.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.files import write_atomically

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
MAGIC = b"vl-peft-bench checkpoint sha256="
DIGEST_HEX = 64


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
    """``state`` holds the optimiser's and schedule's state dicts and the loop's own counters. The
    checkpoint now at ``path`` becomes the previous one (``checkpoint.prev.pt`` beside it)."""
    payload = {"tensors": {n: p.detach().cpu() for n, p in trainable.items()}, "random": random_states(), **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    content = buffer.getvalue()
    if path.is_file():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    write_atomically(path, MAGIC + hashlib.sha256(content).hexdigest().encode() + b"\n" + content)


def checkpoint_files(work_dir: Path) -> tuple[Path, Path]:
    """The newest and the previous checkpoint of a run's work folder."""
    return work_dir / CHECKPOINT, work_dir / PREVIOUS_CHECKPOINT


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's content after checking it against its checksum; ``ValueError`` says what is wrong."""
    data = path.read_bytes()
    head = len(MAGIC) + DIGEST_HEX + 1
    if not data.startswith(MAGIC) or len(data) < head:
        raise ValueError("it does not start with a checksum (truncated, or not written by this code)")
    content = data[head:]
    if hashlib.sha256(content).hexdigest().encode() != data[len(MAGIC):head - 1]:
        raise ValueError("its content does not match its checksum (truncated or corrupted)")
    return torch.load(io.BytesIO(content), map_location="cpu", weights_only=False)


def load_checkpoint(path: Path, trainable: dict[str, nn.Parameter]) -> dict[str, Any] | None:
    """Restore the tensors and random generators from the checkpoint at ``path``, or from the previous
    one beside it when that one is damaged; returns the rest, or None when there is none to resume."""
    payload = None
    for candidate in (path, path.with_name(PREVIOUS_CHECKPOINT)):
        if not candidate.is_file():
            continue
        try:
            payload = read_checkpoint(candidate)
            break
        except (OSError, ValueError) as err:
            damaged = candidate.with_name(candidate.name + ".damaged")
            os.replace(candidate, damaged)
            print(f"The checkpoint {candidate} cannot be used: {err}. Set aside as {damaged.name}; "
                  "trying the previous checkpoint, else training from scratch.", flush=True)
    if payload is None:
        return None
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(payload["tensors"][name])
    restore_random_states(payload.pop("random"))
    payload.pop("tensors")
    return payload
