"""The sweep log: one JSON file per launched sweep under ``RESULTS/runs/sweeps/``.

Records say what one cell was; the sweep log says what was asked for: the command line, the sweep
file's text as written (``--config``), every resolved argument and, once the
sweep ends, how many cells finished and failed. A leaderboard can then be traced back to the
command that produced it, even after the shell history is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.files import write_atomically
from bench.runs.store import RunStore


@dataclass
class SweepLog:
    """The log of the sweep being run; :meth:`start` writes it, :meth:`finish` completes it."""

    path: Path
    entry: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, store: RunStore, argv: Sequence[str], arguments: Mapping[str, Any],
              config: tuple[Path, str] | None = None) -> "SweepLog":
        """Write the log of a sweep launched with ``argv`` (``arguments``: the parsed options; ``config``:
        the sweep file's path and text)."""
        now = datetime.now(timezone.utc)
        name = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.json"  # sorts by start; the pid keeps two launchers apart
        log = cls(store.root / "sweeps" / name, {
            "started": now.isoformat(timespec="seconds"),
            "argv": list(argv),
            "config": None if config is None else {"path": str(config[0]), "text": config[1]},
            "arguments": {key: value for key, value in sorted(arguments.items())},
        })
        log._write()
        return log

    def finish(self, cells: int, finished: int, failed: int) -> None:
        """Add the end time and what became of the sweep's ``cells``."""
        self.entry["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.entry["cells"] = {"planned": cells, "finished": finished, "failed": failed}
        self._write()

    def _write(self) -> None:
        write_atomically(self.path, json.dumps(self.entry, indent=1, default=str).encode())
