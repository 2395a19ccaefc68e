"""What every executor shares: the :class:`Executor` interface and the per-cell helpers.

An executor registers an object with three methods in :data:`bench.launch.EXECUTORS` where it is
defined; the command line adds each one's options, lets it refuse bad input before any work, and
hands it the cells. Whatever runs a cell calls :func:`run_cell_recording_failure`, so a failure is
stored the same way everywhere, and reports with :class:`SweepOutcome`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from tqdm.auto import tqdm

from bench.runs.failure import is_transient
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

    def add(self, cell: Cell, failure: tuple[str, bool] | None, store: RunStore) -> None:
        if failure is None:
            self.finished.append(cell.key)
            tqdm.write(finished_line(cell, store))
        else:
            self.fail(cell, *failure)

    def fail(self, cell: Cell, reason: str, transient: bool) -> None:
        self.failed[cell.key] = reason
        if transient:
            self.transient.add(cell.key)
        print(f"FAILED {cell_label(cell)}: {reason}" + (" (a rerun resumes it)" if transient else ""), file=sys.stderr)

    def merge(self, other: "SweepOutcome") -> "SweepOutcome":
        return SweepOutcome(self.finished + other.finished, self.failed | other.failed, self.transient | other.transient)


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


def run_cell_recording_failure(cell: Cell, context: RunContext) -> tuple[str, bool] | None:
    """Run ``cell``; on an error store it as the cell's failure and return it as text, with whether a
    rerun may get past it, instead of raising."""
    from bench.runs.cell import run_cell  # imports torch and the models: only where cells really run

    try:
        run_cell(cell, context)
        return None
    except Exception as error:  # noqa: BLE001 (one cell's failure must not stop the others)
        context.store.save_failure(cell.key, cell.spec, error)
        return f"{type(error).__name__}: {error}", is_transient(error)


