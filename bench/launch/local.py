"""The local executor: run cells one after another in this process.

A failing cell is recorded in the store's ``failed/`` folder and the sweep goes on; Ctrl-C stops the
sweep, and the interrupted cell resumes from its last checkpoint next time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from bench.runs.plan import Cell, RunContext


@dataclass
class SweepOutcome:
    """Keys of the cells that finished and of those that failed (with a one-line reason)."""

    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_cell_recording_failure(cell: Cell, context: RunContext) -> str | None:
    """Run ``cell``; on an error store it as the cell's failure and return it as text instead of raising."""
    from bench.runs.cell import run_cell  # imports torch and the models: only where cells really run

    try:
        run_cell(cell, context)
        return None
    except Exception as error:  # noqa: BLE001 (one cell's failure must not stop the others)
        context.store.save_failure(cell.key, cell.spec, error)
        return f"{type(error).__name__}: {error}"


def run_local(cells: Sequence[Cell], context: RunContext) -> SweepOutcome:
    outcome = SweepOutcome()
    for cell in tqdm(cells, desc="sweep", unit="cell", disable=not context.progress):
        label = f"{cell.spec.method_label} on {cell.spec.dataset} (shots {cell.spec.shots_label}, seed {cell.spec.train_seed})"
        reason = run_cell_recording_failure(cell, context)
        if reason is None:
            outcome.finished.append(cell.key)
        else:
            outcome.failed[cell.key] = reason
            print(f"FAILED {label}: {reason}", file=sys.stderr)
    return outcome
