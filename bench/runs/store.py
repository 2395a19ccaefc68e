"""The run store: one JSON file per finished run, failures kept apart, work folders for checkpoints.

Layout below ``<results>/runs/``::

    done/<key>.json      finished runs (RunRecord), the only thing reports read
    failed/<key>.json    the last error of a run that failed (never counted as a result)
    work/<key>/          checkpoints and the best tuned weights of a run in progress

Every file is written atomically (a temporary file in the same folder, flushed and fsynced, then
renamed over the target), so a writer killed at any moment leaves either the old file or the new
one, never a partial JSON. Corrupt or foreign files in ``done/`` are reported and skipped.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from bench.files import write_atomically
from bench.runs.failure import is_transient
from bench.runs.record import RunRecord, RunSpec


@dataclass(frozen=True)
class SkippedFile:
    """A file in ``done/`` that could not be read as a run record, and why."""

    path: Path
    reason: str


class RunStore:
    """Finished runs, failures and work folders below ``root`` (``<results>/runs``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        self.work_root = self.root / "work"
        # Outputs of frozen detector parts shared by the cells (bench.train.frozen_cache); a cache,
        # never a result: deleting it only costs time.
        self.frozen_cache_dir = self.root / "cache" / "frozen"
        self.fingerprints_path = self.root / "fingerprints.json"  # bench.runs.fingerprint.FingerprintCache
        self.leases_dir = self.root / "leases"  # bench.runs.lease: who is running which cell

    def result_path(self, key: str) -> Path:
        return self.done_dir / f"{key}.json"

    def failure_path(self, key: str) -> Path:
        return self.failed_dir / f"{key}.json"

    def work_dir(self, key: str) -> Path:
        path = self.work_root / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finished_keys(self) -> set[str]:
        """Keys with a result file, from one directory listing (cheap enough for planning big sweeps)."""
        if not self.done_dir.is_dir():
            return set()
        return {entry.name[:-5] for entry in os.scandir(self.done_dir) if entry.name.endswith(".json") and not entry.name.startswith(".")}

    def read_result(self, key: str) -> RunRecord:
        """The stored record of run ``key``; ``OSError``/``ValueError``/``KeyError``/``TypeError`` when
        the file is missing, malformed or holds another run's result."""
        record = RunRecord.from_json(self.result_path(key).read_text())
        if record.key != key:
            raise ValueError(f"it holds the result of run {record.key}, not {key}")
        return record

    def readable_results(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` whose result file reads as that run's record.

        The others (a file copied in by hand, or left by older code) are not results: each is reported
        as a warning, and the sweep runs its cell again, replacing the file.
        """
        readable = set()
        for key in keys:
            try:
                self.read_result(key)
                readable.add(key)
            except (OSError, ValueError, KeyError, TypeError) as err:
                warnings.warn(
                    f"The result file {self.result_path(key)} cannot be read ({type(err).__name__}: {err}); "
                    "its cell will be run again and the file replaced.",
                    stacklevel=2,
                )
        return readable

    def save_result(self, record: RunRecord) -> Path:
        path = self.result_path(record.key)
        write_atomically(path, record.to_json().encode())
        self.failure_path(record.key).unlink(missing_ok=True)
        return path

    def save_failure(self, key: str, spec: RunSpec, error: BaseException) -> Path:
        """Record why a run failed (its traceback), apart from the results."""
        payload = {
            "key": key,
            "spec": spec.to_dict(),
            "error": f"{type(error).__name__}: {error}",
            "transient": is_transient(error),
            "traceback": "".join(traceback.format_exception(error)),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path = self.failure_path(key)
        write_atomically(path, json.dumps(payload, indent=1).encode())
        return path

    def failures(self) -> dict[str, dict]:
        out = {}
        if self.failed_dir.is_dir():
            for path in sorted(self.failed_dir.glob("*.json")):
                try:
                    out[path.stem] = json.loads(path.read_text())
                except (OSError, ValueError) as err:
                    out[path.stem] = {"error": f"unreadable failure file {path}: {err}"}
        return out

    def load_records(self) -> tuple[list[RunRecord], list[SkippedFile]]:
        """Every readable result, and the files that were skipped with the reason.

        A skipped file is also reported as a warning naming it: it may be a run killed by an older
        version of this code, or a file copied in by hand; the next sweep that includes its cell runs
        that cell again and replaces the file (see :meth:`readable_results`).
        """
        records, skipped = [], []
        if not self.done_dir.is_dir():
            return records, skipped
        for path in sorted(self.done_dir.glob("*.json")):
            try:
                records.append(self.read_result(path.stem))
            except (OSError, ValueError, KeyError, TypeError) as err:
                skipped.append(SkippedFile(path, f"{type(err).__name__}: {err}"))
        for item in skipped:
            warnings.warn(
                f"Skipped the result file {item.path}: {item.reason}. It is not counted; a sweep that includes its cell "
                "runs it again and replaces the file.",
                stacklevel=2,
            )
        return records, skipped
