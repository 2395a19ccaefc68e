"""Cost meters: peak memory of a run (CUDA allocator or process RSS).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` after a reset. On CPU there are no allocator
statistics, so the peak resident set size of the process is used: Linux resets its high-water mark
when ``5`` is written to ``/proc/self/clear_refs``. Where that is not possible the peak since the
process started is reported and ``peak_memory_kind`` says ``rss-process`` instead of ``rss``.
"""

from __future__ import annotations

from pathlib import Path

import torch


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

