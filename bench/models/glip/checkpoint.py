"""Loading official GLIP checkpoints (``glip_tiny_model_o365_goldg*.pth``, ``glip_large_model.pth``).

The official files are ``torch.save({"model": {"module." + key: tensor}, "optimizer": ...})``. Our
modules carry the official names, so after stripping ``module.`` every tensor loads by exact name;
the loader then verifies, instead of trusting: every model tensor must come from the file (except
tensors that tuning methods added through the model's extension slots), and the only file entries
allowed to go unused are the ones GLIP itself never uses (``IGNORABLE_KEYS``). Anything else means
the file and the configuration disagree, and is reported with the first mismatches.

Files are read with ``torch.load(weights_only=True)``: a checkpoint must not be able to run code.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bench.errors import BenchError

DDP_PREFIX = "module."
MAX_LISTED = 8

# File entries GLIP does not use: recomputed anchors, the unused classification conv, BERT's
# position ids (a buffer in old transformers), pooler, MLM head, and the resizer of some configs.
IGNORABLE_KEYS = (
    re.compile(r"^rpn\.anchor_generator\.cell_anchors\.\d+$"),
    re.compile(r"^rpn\.head\.cls_logits\.(weight|bias)$"),
    re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$"),
    re.compile(r"(^|\.)pooler\."),
    re.compile(r"^rpn\.head\.mlm_head\."),
    re.compile(r"^rpn\.resizer\."),
)


@dataclass
class LoadReport:
    """What a load did: tensors loaded, file entries ignored, model tensors left to their method."""

    loaded: int
    ignored: list[str] = field(default_factory=list)
    left_to_methods: list[str] = field(default_factory=list)


def read_official_state_dict(path: str | Path, *, allow_unsafe_pickle: bool = False, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint (or of a plain state-dict or ``.safetensors`` file), ``module.`` stripped.

    ``mmap``: map the file instead of reading it (zip-format files; older ones are read), for checks
    that only look at names and shapes.
    """
    path = Path(path)
    if path.is_dir():
        raise BenchError(
            f"Checkpoint {path} is a folder, not a GLIP checkpoint file: GLIP models read one .pth or .safetensors file "
            "(e.g. glip_tiny_model_o365_goldg.pth). A from_pretrained folder is a Grounding DINO model: pass it with "
            "--model grounding-dino-t (or -b, or mm-grounding-dino-t/-b/-l)."
        )
    if not path.is_file():
        raise BenchError(
            f"Checkpoint {path} does not exist. Download the GLIP weights (e.g. glip_tiny_model_o365_goldg.pth "
            "from the GLIPModel/GLIP repository on the Hugging Face Hub) and pass the file with --weights."
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise BenchError(f"Checkpoint {path} cannot be read ({err}); the file is truncated or not a safetensors file.") from None
    try:
        raw = _torch_load(path, allow_unsafe_pickle, mmap)
    except pickle.UnpicklingError as err:
        disallowed = re.search(r"GLOBAL (\S+)|(\S+) was not an allowed global", str(err))
        if disallowed is None:
            raise BenchError(f"Checkpoint {path} cannot be read; the file is truncated or not a PyTorch checkpoint. "
                             "Pass --weights the model's checkpoint file (.pth or .safetensors).") from None
        raise BenchError(
            f"Checkpoint {path} holds Python objects beyond tensors ({next(g for g in disallowed.groups() if g)}), "
            "so it was not loaded: reading it would let the file run code. If you trust its source, pass "
            "--allow-unsafe-checkpoint to load it anyway (a pickled file can run any code when it is read)."
        ) from None
    except Exception as err:  # noqa: BLE001 (a file that is no checkpoint fails in many ways: KeyError, struct.error, ...)
        raise BenchError(f"Checkpoint {path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                         "the file is truncated or not a PyTorch checkpoint. Pass --weights the model's checkpoint file (.pth or .safetensors).") from None
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(
            f"Checkpoint {path} is not a GLIP checkpoint: expected a dict of tensors, or {{'model': dict of tensors}}."
        )
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def _torch_load(path: Path, allow_unsafe_pickle: bool, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # not a zip-format file: read it whole below
                raise
    return torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def load_state_dict_verified(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    is_method_tensor=lambda key: False,
) -> LoadReport:
    """Copy ``state`` into ``model`` and prove that the two describe the same architecture.

    ``is_method_tensor(key)`` marks model tensors a tuning method added (they are not in any official
    file and keep their own initialisation).
    """
    own = model.state_dict()
    method_keys = [k for k in own if is_method_tensor(k)]
    expected, ignored = verify_state_dict_shapes(own, state, source=source, is_method_tensor=is_method_tensor)
    model.load_state_dict({k: state[k] for k in expected}, strict=False)  # only method tensors stay as they are
    return LoadReport(loaded=len(expected), ignored=sorted(ignored), left_to_methods=sorted(method_keys))


def verify_state_dict_shapes(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    is_method_tensor=lambda key: False,
) -> tuple[set[str], list[str]]:
    """Prove that ``state`` (a file's tensors) and ``own`` (a model's) describe the same architecture:
    ``(model keys to load, ignorable file keys)``, or one error listing the first mismatches. Reads
    only names and shapes, so it also checks a file against a model on the meta device."""
    expected = {k for k in own if not is_method_tensor(k)}
    missing = expected - set(state)
    ignored = [k for k in state if k not in own and any(p.search(k) for p in IGNORABLE_KEYS)]
    unexpected = set(state) - set(own) - set(ignored)
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in expected & set(state)
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} tensor(s) have other shapes: {_listed(wrong_shape)}")
        if missing:
            problems.append(f"{len(missing)} model tensor(s) are not in the file: {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} file entries match nothing in the model: {_listed(unexpected)}")
        raise BenchError(
            f"Checkpoint {source} does not match this model configuration: " + "; ".join(problems) + ". "
            "Check that --model matches the file (glip-t for glip_tiny_*.pth, glip-l for glip_large_model.pth) "
            "and that the file is an official GLIP checkpoint or was saved by this project."
        )
    return expected, ignored


def load_official_checkpoint(
    model: nn.Module, path: str | Path, *, allow_unsafe_pickle: bool = False, is_method_tensor=lambda key: False
) -> LoadReport:
    """Read an official GLIP checkpoint and load it strictly (see :func:`load_state_dict_verified`)."""
    state = read_official_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
    return load_state_dict_verified(model, state, source=str(path), is_method_tensor=is_method_tensor)


def as_official_checkpoint(model: nn.Module) -> dict[str, Any]:
    """The model's weights in the official file layout (for round-trip tests and exports)."""
    return {"model": {DDP_PREFIX + k: v for k, v in model.state_dict().items()}}
