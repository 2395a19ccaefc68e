"""The local executor: run cells on this machine, one after another or several at once.

A failing cell is recorded in the store's ``failed/`` folder and the sweep goes on; Ctrl-C stops the
sweep, and interrupted cells resume from their last checkpoint next time. With ``jobs > 1`` cells
run in that many worker processes (``concurrent.futures`` with the spawn start method), and on a
CPU the cores are shared out evenly: small models use cores better as several single-threaded
processes than as one multi-threaded one (glip-nano: about 1.5x the throughput on 2 cores).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from bench.launch import EXECUTORS
from bench.runs.failure import is_transient
from bench.runs.plan import Cell, RunContext
from bench.runs.store import RunStore


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
    from bench.runs.cell import SELECTED_WEIGHTS

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


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_local(cells: Sequence[Cell], context: RunContext, jobs: int = 1) -> SweepOutcome:
    """Run ``cells`` here, ``jobs`` at a time (per-step progress bars only when one runs at a time)."""
    outcome = SweepOutcome()
    bar = tqdm(total=len(cells), desc="sweep", unit="cell", disable=not context.progress)
    if jobs <= 1 or len(cells) <= 1:
        for cell in cells:
            outcome.add(cell, run_cell_recording_failure(cell, context), context.store)
            bar.update(1)
        bar.close()
        return outcome
    quiet = dataclasses.replace(context, progress=False)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell_recording_failure, cell, quiet): cell for cell in cells}
        try:
            for future in as_completed(futures):
                outcome.add(futures[future], future.result(), context.store)
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
    return outcome


def run_from_arguments(cells: Sequence[Cell], context: RunContext, args) -> SweepOutcome:
    """The ``local`` executor as the command line calls it (``--jobs``)."""
    return run_local(cells, context, jobs=args.jobs)


EXECUTORS.add("local", run_from_arguments, "this machine: --jobs cells at once, each in its own process")
