"""Whether a cell's failure is one a rerun can get past, so the sweep says "fix this" or "rerun".

Most failures are deterministic: the same cell on the same inputs fails the same way (a bad option,
file or checkpoint, a method that does not fit the model), and running it again only repeats it.
A few come from the run's circumstances instead: memory ran out, the process was killed or
preempted, a file system or network hiccuped. Only those are worth rerunning as they are.
"""

from __future__ import annotations

import torch

from bench.errors import BenchError

TRANSIENT_TYPES = (MemoryError, torch.cuda.OutOfMemoryError, ConnectionError, TimeoutError, InterruptedError)
# OSErrors about the inputs themselves are deterministic; the others (I/O errors, stale NFS handles,
# a full disk) depend on the machine at the time.
DETERMINISTIC_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
TRANSIENT_MESSAGES = ("out of memory", "nccl", "cuda error", "cudnn_status_alloc_failed", "bus error")


def is_transient(error: BaseException) -> bool:
    """Whether rerunning the failed cell unchanged may succeed (see the module docstring)."""
    if isinstance(error, BenchError):
        return False
    if isinstance(error, TRANSIENT_TYPES):
        return True
    if isinstance(error, OSError):
        return not isinstance(error, DETERMINISTIC_OS_ERRORS)
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in TRANSIENT_MESSAGES)
