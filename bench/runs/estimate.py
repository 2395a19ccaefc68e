"""What a sweep will cost, estimated from what its finished cells already measured (``--dry-run``).

A cell's cost is its wall time (training, validation and test scoring). Nothing is predicted from
first principles: a cell still to run is priced at the median wall time of the finished cells of
the same model, method, dataset and shots (another seed or trial: the same work), else of the same
model and method on any dataset (rough: datasets differ in size), else it has no estimate. Where
the finished cells ran (their device) is said with the estimate, since times do not transfer
between machines.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from bench.runs.plan import Cell
from bench.runs.record import RunRecord, RunSpec


def _task(spec: RunSpec) -> tuple[str, str, str, str]:
    return spec.model, spec.method_label, spec.dataset, spec.shots_label


def _method(spec: RunSpec) -> tuple[str, str]:
    return spec.model, spec.method_label


@dataclass
class SweepEstimate:
    """Seconds per cell still to run, by how the estimate was found, and the devices it comes from."""

    exact_s: float = 0.0
    rough_s: float = 0.0
    unknown: list[Cell] = field(default_factory=list)
    sources: int = 0
    devices: Counter = field(default_factory=Counter)

    def describe(self, todo: int) -> str:
        if todo == 0:
            return "Nothing to run."
        if self.sources == 0:
            return (f"No estimate of the {todo} cell(s) to run: no finished cell of their methods is stored yet. Run "
                    "one replicate first (e.g. --seeds 0, or --datasets with one dataset), then --dry-run again.")
        hours = (self.exact_s + self.rough_s) / 3600
        where = ", ".join(f"{device} ({n})" for device, n in self.devices.most_common(3))
        rough = f", of which {self.rough_s / 3600:.1f} h from other datasets of the same method (rough)" if self.rough_s else ""
        unknown = (f"; {len(self.unknown)} cell(s) have no finished cell of their method to estimate from"
                   if self.unknown else "")
        return (f"Estimated cost of the {todo - len(self.unknown)} cell(s) with an estimate: {hours:.1f} h of device time"
                f"{rough}, from the wall times of {self.sources} finished cell(s) on {where}{unknown}. "
                "Divide by the cells that run at once (--jobs, or the SLURM array's parallelism).")


def estimate_sweep(todo: Sequence[Cell], finished: Sequence[RunRecord]) -> SweepEstimate:
    """Price every cell of ``todo`` from ``finished`` records (see the module docstring)."""
    by_task: dict[tuple, list[float]] = defaultdict(list)
    by_method: dict[tuple, list[float]] = defaultdict(list)
    for record in finished:
        by_task[_task(record.spec)].append(record.cost.wall_s)
        by_method[_method(record.spec)].append(record.cost.wall_s)
    estimate = SweepEstimate()
    used: set[tuple] = set()
    for cell in todo:
        if by_task.get(_task(cell.spec)):
            estimate.exact_s += statistics.median(by_task[_task(cell.spec)])
            used |= {("task", _task(cell.spec))}
        elif by_method.get(_method(cell.spec)):
            estimate.rough_s += statistics.median(by_method[_method(cell.spec)])
            used |= {("method", _method(cell.spec))}
        else:
            estimate.unknown.append(cell)
    sources = [r for r in finished if ("task", _task(r.spec)) in used or ("method", _method(r.spec)) in used]
    estimate.sources = len(sources)
    estimate.devices = Counter(str(r.provenance.get("device", "unknown device")) for r in sources)
    return estimate


def plan_summary(cells: Sequence[Cell], todo: Sequence[Cell]) -> list[str]:
    """One line per method: its cells done and to run, per dataset."""
    pending = {cell.key for cell in todo}
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for cell in cells:
        counts[cell.spec.method_label][cell.spec.dataset][cell.key in pending] += 1
    lines = []
    for method, datasets in counts.items():
        done = sum(d for d, _ in datasets.values())
        left = sum(t for _, t in datasets.values())
        per = ", ".join(f"{name} {d}/{d + t}" for name, (d, t) in datasets.items())
        lines.append(f"  {method:<28} {done:>4} done, {left:>4} to run   ({per})")
    return lines
