"""The local executor: run cells on this machine, one after another or several at once.

A failing cell is recorded in the store's ``failed/`` folder and the sweep goes on; Ctrl-C or SIGTERM
stops the sweep and its worker processes, and interrupted cells resume from their last checkpoint
next time. With ``jobs > 1`` cells
run in that many worker processes (``concurrent.futures`` with the spawn start method), and on a
CPU the cores are shared out evenly: small models use cores better as several single-threaded
processes than as one multi-threaded one (glip-nano: about 1.5x the throughput on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from bench.devices import check_device
from bench.errors import BenchError
from bench.launch import EXECUTORS
from bench.launch.base import SweepOutcome, run_cell_recording_failure
from bench.runs.plan import Cell, RunContext


def _start_worker(threads: int) -> None:
    """A worker's setup: its share of the cores, and SIGTERM as an exit that runs ``finally`` blocks
    (the cell's lease is released, :mod:`bench.runs.lease`) instead of an abrupt death."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the launcher stops its workers the way Ctrl-C does


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a terminal closing) stops the launcher like Ctrl-C, so it stops its workers too."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_workers() -> None:
    """Stop the pool's worker processes (they would otherwise run their cells on, orphaned) and wait
    for them: each releases its cell's lease on the way out."""
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=30)


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
    with _sigterm_interrupts(), ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_start_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell_recording_failure, cell, quiet): cell for cell in cells}
        try:
            for future in as_completed(futures):
                outcome.add(futures[future], future.result(), context.store)
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_workers()
            raise
        finally:
            bar.close()
    return outcome


class LocalExecutor:
    """``--executor local``: this machine, ``--jobs`` cells at once."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("local executor (--executor local)")
        group.add_argument("--jobs", type=int, default=1,
                           help="cells run at once, each in its own process; on a CPU the cores are shared out evenly "
                                "(default: 1)")

    def check(self, args: argparse.Namespace) -> None:
        if args.jobs < 1:
            raise BenchError(f"--jobs {args.jobs}: the number of cells run at once must be at least 1.")
        check_device(args.device)

    def run(self, cells: Sequence[Cell], context: RunContext, args: argparse.Namespace) -> SweepOutcome:
        return run_local(cells, context, jobs=args.jobs)


EXECUTORS.add("local", LocalExecutor(), "this machine: --jobs cells at once, each in its own process")
