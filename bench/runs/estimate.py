"""What a sweep will cost, estimated from what was already measured (``--dry-run``).

A cell's cost is its wall time (training, validation and test scoring). A cell still to run is
priced at the median wall time of the finished cells of the same model, method, dataset and shots
(another seed or trial: the same work), else of the same model and method on any dataset (rough:
datasets differ in size), else, given a step-time profile (``--cost-model``, the JSON that
``python -m bench.profile --out`` writes), at its planned training images times the profiled
seconds per training image of that model and method (an upper bound on training alone: early
stopping and evaluation are not in it), else it has no estimate. Where the measurements were made
is said with the estimate, since times do not transfer between machines.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from bench.catalog import Catalog
from bench.errors import BenchError
from bench.runs.plan import Cell, RunContext
from bench.runs.record import RunRecord, RunSpec
from bench.train.protocol import resolve_protocol


def _task(spec: RunSpec) -> tuple[str, str, str, str]:
    return spec.model, spec.method_label, spec.dataset, spec.shots_label


def _method(spec: RunSpec) -> tuple[str, str]:
    return spec.model, spec.method_label


@dataclass
class SweepEstimate:
    """Seconds per cell still to run, by how the estimate was found, and the devices it comes from."""

    exact_s: float = 0.0
    rough_s: float = 0.0
    profiled_s: float = 0.0
    profiled_cells: int = 0
    profile_device: str = ""
    unknown: list[Cell] = field(default_factory=list)
    sources: int = 0
    devices: Counter = field(default_factory=Counter)

    def describe(self, todo: int) -> str:
        if todo == 0:
            return "Nothing to run."
        if self.sources == 0 and self.profiled_cells == 0:
            return (f"No estimate of the {todo} cell(s) to run: no finished cell of their methods is stored yet and no "
                    "--cost-model profile covers them. Run one replicate first (e.g. --seeds 0, or --datasets with one "
                    "dataset), or profile the methods (python -m bench.profile --out FILE; --cost-model FILE), then "
                    "--dry-run again.")
        parts = []
        if self.sources:
            where = ", ".join(f"{device} ({n})" for device, n in self.devices.most_common(3))
            rough = f", of which {self.rough_s / 3600:.1f} h from other datasets of the same method (rough)" if self.rough_s else ""
            parts.append(f"{(self.exact_s + self.rough_s) / 3600:.1f} h for {todo - len(self.unknown) - self.profiled_cells} "
                         f"cell(s) from the wall times of {self.sources} finished cell(s) on {where}{rough}")
        if self.profiled_cells:
            parts.append(f"at most {self.profiled_s / 3600:.1f} h of training for {self.profiled_cells} cell(s) from the "
                         f"step-time profile ({self.profile_device}; planned training images x profiled seconds per "
                         "image, without early stopping or evaluation)")
        unknown = f"; {len(self.unknown)} cell(s) have no estimate" if self.unknown else ""
        return (f"Estimated device time of the cells to run: {'; '.join(parts)}{unknown}. Divide by the cells that run at "
                "once (--jobs, or the SLURM array's parallelism).")


@dataclass(frozen=True)
class StepProfile:
    """Seconds per training image by (model, method), from ``python -m bench.profile --out`` rows."""

    seconds_per_image: Mapping[tuple[str, str], float]
    device: str

    @classmethod
    def load(cls, path: Path) -> "StepProfile":
        try:
            rows = json.loads(Path(path).read_text())
            measured = [r for r in rows if "error" not in r]
            table = {(r["model"], r["method"]): r["seconds"] / r["batch"] for r in measured}
            devices = sorted({f"{r['device_name']}, {r['height']}x{r['width']}, amp {r['amp']}" for r in measured})
        except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError) as err:
            raise BenchError(f"--cost-model {path} is not a profile written by `python -m bench.profile --out FILE` "
                             f"({type(err).__name__}: {err}); write one with that command.") from None
        return cls(table, "; ".join(devices))


def estimate_sweep(todo: Sequence[Cell], finished: Sequence[RunRecord], profile: StepProfile | None = None,
                   training_images: Callable[[Cell], int] | None = None) -> SweepEstimate:
    """Price every cell of ``todo`` from ``finished`` records, else from ``profile`` and the cell's
    ``training_images`` (see the module docstring)."""
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
        elif profile is not None and training_images is not None and (cell.spec.model, cell.spec.method) in profile.seconds_per_image:
            estimate.profiled_s += training_images(cell) * profile.seconds_per_image[cell.spec.model, cell.spec.method]
            estimate.profiled_cells += 1
            estimate.profile_device = profile.device
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


class PlannedTrainingImages:
    """The training images a cell's protocol plans to process: its total steps (the protocol's cap,
    before any early stop) times the images per step, for the cell's training set (full or K-shot,
    without held-out validation images). Training-set sizes are read once per dataset and split."""

    def __init__(self, context: RunContext, catalog: Catalog) -> None:
        self.context, self.catalog = context, catalog
        self._sizes: dict[tuple, int] = {}

    def __call__(self, cell: Cell) -> int:
        from bench.runs.cell import training_and_validation  # reads the annotation files

        spec = cell.spec
        split = (spec.dataset, spec.shots, spec.split_seed, spec.validation)
        if split not in self._sizes:
            self._sizes[split] = len(training_and_validation(self.catalog.dataset(spec.dataset), spec, self.context)[0])
        protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
        return protocol.total_steps(self._sizes[split]) * protocol.images_per_step
