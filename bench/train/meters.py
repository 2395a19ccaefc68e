"""Cost meters: peak memory of a run (CUDA allocator or process RSS) and modes of the modules.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` after a reset. On CPU there are no allocator
statistics, so the peak resident set size of the process is used: Linux resets its high-water mark
when ``5`` is written to ``/proc/self/clear_refs``. Where that is not possible the peak since the
process started is reported and ``peak_memory_kind`` says ``rss-process`` instead of ``rss``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PeakMemory:
    """Resettable peak-memory meter for ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "rss"

    def reset(self) -> None:
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "rss-process"

    def read(self) -> int:
        """Peak bytes since the last :meth:`reset` (0 where the platform has no measure)."""
        if self.kind == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def set_training_modes(model: nn.Module) -> None:
    """Train mode where something is trained, eval mode on frozen parts.

    As GLIP does for its frozen components, a module whose parameters are all frozen runs in eval
    mode (no dropout, DropBlock or drop-path noise through parts that cannot adapt to it). Modules
    without parameters of their own subtree (dropout, activations) follow their parent, so a fusion
    layer that holds a method's tokens keeps its dropout.
    """
    model.train()

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)
