"""Tuned weights on their own: the trained tensors plus the method and its config, as safetensors.

A tuned state is a few KB to MB instead of the 1-4 GB base model; loading it re-applies the method
(with the stored config) to a fresh frozen base and then copies the tensors, so the result can always
be traced to exactly what produced it. A state saved by a run also names that run (its key and spec)
and the content fingerprint of the base weights it was trained on, so it can be scored again on its
own (``run_bench.py eval --tuned``) and refused on any other base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bench.errors import BenchError
from bench.tuning.base import Method, build_method

FORMAT = "vl-peft-bench/tuned-state/1"
RUN_METADATA = ("run_key", "run_spec", "base_fingerprint")
"""What a run adds to its tuned state: its key, its spec (JSON) and the fingerprint of its base weights
(:func:`bench.runs.fingerprint.weights_fingerprint`; :data:`NO_BASE_WEIGHTS` for a randomly initialised base)."""
NO_BASE_WEIGHTS = "none"


def save_tuned(path: str | Path, model: nn.Module, method: Method, trainable: dict[str, nn.Parameter],
               run: Mapping[str, str] | None = None) -> Path:
    """Write the trainable tensors of ``model`` with ``method``'s name and config (atomically); ``run``
    adds text entries naming what produced them (:data:`RUN_METADATA`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: parameter.detach().cpu().contiguous() for name, parameter in trainable.items()}
    metadata = {"format": FORMAT, "method": method.name, "config": method.config.to_json(), **(run or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    tmp.replace(path)
    return path


def tuned_metadata(path: str | Path) -> dict[str, str]:
    """The text entries of a tuned state (method, config and, for a run's state, :data:`RUN_METADATA`),
    read from its header without loading a tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= path.stat().st_size - 8:  # the first 8 bytes of a safetensors file: its header's length
                raise ValueError(f"a header of {header_len} bytes in a file of {path.stat().st_size}")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as err:
        raise BenchError(f"Tuned state {path} cannot be read ({err}); it is missing, truncated or not a safetensors file.") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if metadata.get("format") != FORMAT:
        raise BenchError(f"{path} is not a tuned state written by this benchmark (format {metadata.get('format')!r}); "
                         "pass the selected.safetensors a run left under RESULTS/runs/work/<run key>/.")
    return metadata


def load_tuned(path: str | Path, base: nn.Module) -> tuple[Method, dict[str, nn.Parameter]]:
    """Re-apply the stored method to ``base`` (a freshly loaded base model) and load its tensors."""
    path = Path(path)
    metadata = tuned_metadata(path)
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise BenchError(f"Tuned state {path} cannot be read ({err}); it is truncated or not a safetensors file.") from None
    method = build_method(metadata["method"], json.loads(metadata["config"]))
    trainable = method.apply(base)
    if set(tensors) != set(trainable):
        raise BenchError(
            f"Tuned state {path} does not fit this base model: it holds {len(tensors)} tensors, the method "
            f"{method.name!r} trains {len(trainable)} here (missing {sorted(set(trainable) - set(tensors))[:3]}, "
            f"extra {sorted(set(tensors) - set(trainable))[:3]}). Was it trained on another model?"
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            if parameter.shape != tensors[name].shape:
                raise BenchError(f"Tuned state {path}: {name} has shape {tuple(tensors[name].shape)}, the model expects {tuple(parameter.shape)}.")
            parameter.copy_(tensors[name])
    return method, trainable
