"""Which device a run uses (``--device``), refused before any work when it is not there."""

from __future__ import annotations

import torch

from bench.errors import BenchError

DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N")


def pick_device(name: str) -> torch.device:
    """``auto``: the first GPU if there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> None:
    """Refuse a ``--device`` that is not a device name, or a GPU this machine does not have."""
    try:
        device = pick_device(name)
    except RuntimeError:
        raise BenchError(f"--device {name!r} is not a device; choose one of {', '.join(DEVICE_KINDS)} (default: auto).") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r}: this benchmark runs on {', '.join(DEVICE_KINDS)}; {device.type} is not supported.")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BenchError(f"--device {name}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'}). Use --device cpu, or run on a GPU node "
                             "(--executor slurm checks the device there, not here).")
        if device.index is not None and device.index >= count:
            raise BenchError(f"--device {name}: this machine has {count} GPU(s), numbered 0 to {count - 1}.")
