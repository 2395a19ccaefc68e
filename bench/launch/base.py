"""What every executor shares: the :class:`Executor` interface and the per-cell helpers.

An executor registers an object with three methods in :data:`bench.launch.EXECUTORS` where it is
defined; the command line adds each one's options, lets it refuse bad input before any work, and
hands it the cells. Whatever runs a cell calls :func:`run_cell_recording_failure`, so a failure is
stored the same way everywhere, and reports with :class:`SweepOutcome`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from tqdm.auto import tqdm

from bench.runs.failure import is_transient
from bench.runs.lease import Heartbeat, Leases, Owner
from bench.runs.plan import Cell, RunContext
from bench.runs.store import RunStore


class Executor(Protocol):
    """Where the cells of a sweep run."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this executor's own options (one argument group) to ``run_bench.py``'s parser."""
        ...

    def check(self, args: argparse.Namespace) -> None:
        """Refuse bad values of those options (and what this executor needs of the machine) before any
        work, with :class:`bench.errors.BenchError`."""
        ...

    def run(self, cells: Sequence[Cell], context: RunContext, args: argparse.Namespace) -> "SweepOutcome":
        """Run ``cells`` and say which finished and which failed (read from the run store)."""
        ...


@dataclass
class SweepOutcome:
    """Keys of the cells that finished and of those that failed (with a one-line reason), and which
    of the failures a rerun may get past (:mod:`bench.runs.failure`)."""

    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    transient: set[str] = field(default_factory=set)
    leased: dict[str, str] = field(default_factory=dict)  # left to the live owner of their lease, described

    def add(self, cell: Cell, result: tuple[str, bool] | Leased | None, store: RunStore) -> None:
        if result is None:
            self.finished.append(cell.key)
            tqdm.write(finished_line(cell, store))
        elif isinstance(result, Leased):
            self.leased[cell.key] = result.holder
            tqdm.write(f"running elsewhere {cell_label(cell)}: {result.holder}; left to it")
        else:
            self.fail(cell, *result)

    def fail(self, cell: Cell, reason: str, transient: bool) -> None:
        self.failed[cell.key] = reason
        if transient:
            self.transient.add(cell.key)
        print(f"FAILED {cell_label(cell)}: {reason}" + (" (a rerun resumes it)" if transient else ""), file=sys.stderr)

    def left_to(self, running: Mapping[str, Owner]) -> "SweepOutcome":
        """This outcome with the cells that were not started because another runner holds them."""
        return self.merge(SweepOutcome(leased={key: owner.describe() for key, owner in running.items()}))

    def merge(self, other: "SweepOutcome") -> "SweepOutcome":
        return SweepOutcome(self.finished + other.finished, self.failed | other.failed, self.transient | other.transient,
                            self.leased | other.leased)


def cell_label(cell: Cell) -> str:
    s = cell.spec
    trial = "".join(f", trial {k}={v:g}" for k, v in sorted(s.tuned_values.items())) if s.is_trial else ""
    return f"{s.method_label} on {s.dataset} (shots {s.shots_label}, seed {s.train_seed}{trial})"


def finished_line(cell: Cell, store: RunStore) -> str:
    """One line on a finished cell: its scores and where its record and tuned weights are."""
    from bench.runs.cell import SELECTED_WEIGHTS  # imports torch: only where a cell finished

    record = store.read_result(cell.key)
    scores = ", ".join(f"{split} AP {100 * metrics['AP']:.1f}" for split, metrics in (("val", record.val), ("test", record.test))
                       if "AP" in metrics)
    weights = store.work_root / cell.key / SELECTED_WEIGHTS
    where = f"record {store.result_path(cell.key)}" + (f", tuned weights {weights}" if weights.is_file() else "")
    return f"done {cell_label(cell)}: {scores or 'no scores'} in {record.cost.wall_s:.0f} s; {where}"


ATTEMPTS_LOG = "attempts.log"
"""One line per start of a cell, in its work folder: when, which SLURM job (``-`` outside SLURM) and
process, where, and whether it resumed from a checkpoint (what a requeue or the retry round is for)."""


def note_attempt(cell: Cell, store: RunStore, owner: Owner) -> None:
    """Add this start of ``cell`` to its attempts log (taken under its lease, so lines never interleave)."""
    import torch

    from bench.train.checkpoint import checkpoint_files

    work = store.work_dir(cell.key)
    resumes = any(path.is_file() for path in checkpoint_files(work))  # the newest, or the one before it
    start = "resumes from its checkpoint" if resumes else "starts from scratch"
    # The thread count is logged because CPU results are bitwise reproducible only with the same count.
    process = f"process {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}"
    line = (f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} job {owner.slurm_task or '-'} pid {owner.pid} "
            f"on {owner.host} ({torch.get_num_threads()} CPU threads, {process}) {start}\n")
    with open(work / ATTEMPTS_LOG, "a") as log:
        log.write(line)


def read_attempts(store: RunStore, key: str) -> list[str]:
    """The lines :func:`note_attempt` logged for ``key``, oldest first."""
    path = store.work_root / key / ATTEMPTS_LOG
    return path.read_text().splitlines() if path.is_file() else []


@dataclass(frozen=True)
class Leased:
    """The cell was left alone: another live owner holds its lease (:mod:`bench.runs.lease`)."""

    holder: str


def run_cell_recording_failure(cell: Cell, context: RunContext) -> tuple[str, bool] | Leased | None:
    """Run ``cell`` under its lease; on an error store it as the cell's failure and return it as text,
    with whether a rerun may get past it, instead of raising. A cell whose lease another live owner
    holds is not run (:class:`Leased`); nor is one that another runner finished since it was planned."""
    from bench.runs.cell import run_cell  # imports torch and the models: only where cells really run

    store = context.store
    leases, owner = Leases(store.leases_dir), Owner.this_process()
    held = leases.take(cell.key, owner, adopt=owner.slurm_task, say=tqdm.write)
    if held is not None:
        return Leased(held.describe())
    with Heartbeat(leases, cell.key, owner):
        if not cell.rerun and store.result_path(cell.key).is_file() and store.readable_results([cell.key]):
            return None  # finished by another runner while this one waited for it
        note_attempt(cell, store, owner)
        try:
            run_cell(cell, context)
            return None
        except Exception as error:  # noqa: BLE001 (one cell's failure must not stop the others)
            try:
                store.save_failure(cell.key, cell.spec, error)
            except OSError as unwritable:  # e.g. the disk that stopped the cell is full: say it here instead
                print(f"The failure of {cell_label(cell)} could not be recorded in {store.failed_dir} ({unwritable}).",
                      file=sys.stderr)
            return f"{type(error).__name__}: {error}", is_transient(error)


