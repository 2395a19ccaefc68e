"""Equal-budget hyper-parameter selection on validation only (``--tune lr``).

A tuned comparison runs in two stages, both made of ordinary cells (keyed, stored, resumable, on
any executor):

1. **Trials**: every method that trains gets the same number of trials over its search space
   (:mod:`bench.tuning.search`: the same width and the same relative points for all), each trained on
   the first seed replicate of the sweep and scored on the validation split only. A trial cell never
   opens the test split (:func:`bench.runs.cell.run_cell`), and its record has no test metrics.
2. **Selection, then the real runs**: :func:`select_settings` reads the trials' validation scores,
   and nothing else, and picks one setting per method and dataset (``scope="dataset"``) or per
   method over the whole sweep's datasets (``scope="suite"``: the best mean validation score). Only
   then is every replicate run with the selected setting and scored once on test. The replicate the
   trials ran on is not trained twice: its cell (``from_trial``) scores the winning trial's stored
   weights on test, which is what training it again would give.

Selection is made by shots (each shots count is its own task). Ties go to the trial nearest the
middle of the search space, i.e. the method's sourced default.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bench.errors import BenchError
from bench.runs.plan import Cell, PlanInputs, method_trains, replicate_cells, seed_pairs, unique
from bench.runs.record import SELECTED, TRIAL, RunRecord
from bench.tuning.base import build_method
from bench.tuning.search import parse_tuned_fields, search_space, trial_values

SCOPES = ("dataset", "suite")
SELECTION_METRIC = "AP"


@dataclass(frozen=True)
class TuneRequest:
    """``--tune``: which fields, how many trials per method (and dataset, or suite), and the scope of
    one selection."""

    fields: tuple[str, ...]
    trials: int = 3
    scope: str = "dataset"

    def __post_init__(self) -> None:
        parse_tuned_fields(self.fields)
        if self.trials < 1:
            raise BenchError(f"--tune-trials {self.trials}: every method needs at least 1 trial.")
        if self.scope not in SCOPES:
            raise BenchError(f"--tune-scope {self.scope!r}: choose one of {', '.join(SCOPES)}.")

    def describe(self) -> str:
        per = "dataset" if self.scope == "dataset" else "suite (all datasets of the sweep)"
        return f"{','.join(self.fields)} tuned on validation, {self.trials} trials per method and {per}"


@dataclass(frozen=True)
class Selection:
    """The setting chosen for ``method`` at ``shots`` on ``dataset`` (None: the whole sweep's datasets),
    with every trial's validation score (mean over the datasets for the suite scope)."""

    method: str
    shots: int | None
    dataset: str | None
    values: Mapping[str, float]
    val_score: float
    trials: tuple[tuple[Mapping[str, float], float], ...]


def _trial_settings(inputs: PlanInputs, method: str, tune: TuneRequest) -> list[dict[str, float]]:
    options = dict(inputs.request.method_options.get(method, {}))
    return trial_values(search_space(build_method(method, options), tune.fields), tune.trials)


def trial_cells(inputs: PlanInputs, tune: TuneRequest) -> list[Cell]:
    """Every trial of every method that trains: same count for each, on the first seed replicate."""
    request = inputs.request
    cells = []
    for method in request.methods:
        for values in _trial_settings(inputs, method, tune):
            for spec in inputs.datasets:
                for shots in request.shots:
                    split_seed, train_seed = seed_pairs(request, method, shots, spec)[0]
                    cells.append(inputs.cell(method, spec.name, shots, split_seed, train_seed,
                                             {"stage": TRIAL, "values": values}))
    return unique(cells)


def untuned_cells(inputs: PlanInputs) -> list[Cell]:
    """The cells of methods with nothing to tune (zero-shot): run as they are, next to the trials."""
    request = inputs.request
    return replicate_cells(inputs, [method for method in request.methods if not method_trains(request, method)])


def validation_scores(trials: Sequence[Cell], records: Mapping[str, RunRecord]) -> dict[str, float]:
    """The validation score of each finished trial by key (NaN where undefined). Reads ``val`` only,
    and refuses a record that is not a trial (so no test metric can reach a selection)."""
    scores = {}
    for cell in trials:
        record = records.get(cell.key)
        if record is None:
            continue
        if not record.spec.is_trial or record.test:
            raise BenchError(f"Run {cell.key} is not a validation-only tuning trial; selection reads trials only.")
        scores[cell.key] = float(record.val.get(SELECTION_METRIC, math.nan))
    return scores


def select_settings(trials: Sequence[Cell], val_scores: Mapping[str, float], tune: TuneRequest
                    ) -> tuple[dict[tuple[str, int | None, str | None], Selection], list[Cell]]:
    """The selected setting per (method, shots, dataset or None), from validation scores only.

    Returns the selections and the trials still missing (a group with a missing trial gets no
    selection: choosing among fewer trials would give that method a smaller budget).
    """
    groups: dict[tuple[str, int | None, str | None], list[Cell]] = defaultdict(list)
    for cell in trials:
        s = cell.spec
        groups[(s.method, s.shots, s.dataset if tune.scope == "dataset" else None)].append(cell)
    selections, missing = {}, []
    for (method, shots, dataset), cells in groups.items():
        absent = [c for c in cells if c.key not in val_scores]
        if absent:
            missing.extend(absent)
            continue
        by_setting: dict[tuple, list[float]] = defaultdict(list)
        for cell in cells:
            by_setting[tuple(sorted(cell.spec.tuned_values.items()))].append(val_scores[cell.key])
        scored = [(dict(setting), _mean(scores)) for setting, scores in by_setting.items()]
        best = max(scored, key=lambda item: -math.inf if math.isnan(item[1]) else item[1])  # first best: nearest the default
        selections[(method, shots, dataset)] = Selection(method, shots, dataset, best[0], best[1], tuple(scored))
    return selections, missing


def _mean(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def final_cells(inputs: PlanInputs, tune: TuneRequest,
                selections: Mapping[tuple[str, int | None, str | None], Selection]) -> list[Cell]:
    """Every replicate of every tuned method, with its selected setting, to be scored on test."""
    request = inputs.request
    cells = []
    for method in request.methods:
        if not method_trains(request, method):
            continue
        for spec in inputs.datasets:
            for shots in request.shots:
                selection = selections.get((method, shots, spec.name if tune.scope == "dataset" else None))
                if selection is None:
                    continue
                tuning: dict[str, Any] = {
                    "stage": SELECTED, "values": dict(selection.values), "fields": list(tune.fields),
                    "trials": len(selection.trials), "scope": tune.scope, "selected_on": f"val {SELECTION_METRIC}",
                }
                replicates = seed_pairs(request, method, shots, spec)
                trial = inputs.cell(method, spec.name, shots, *replicates[0], {"stage": TRIAL, "values": dict(selection.values)})
                for split_seed, train_seed in replicates:
                    reuse = {"from_trial": trial.key} if (split_seed, train_seed) == replicates[0] else {}
                    cells.append(inputs.cell(method, spec.name, shots, split_seed, train_seed, tuning | reuse))
    return unique(cells)
