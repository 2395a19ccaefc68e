"""Leaderboard tables as CSV (unrounded fractions, for further analysis) and markdown (for reading).

The markdown shows scores in percent with one decimal, suite scores as ``mean ± half-width`` of the
95% t-interval, and "–" where there is no number; a note under each table says what the numbers
are, so a table pasted elsewhere still explains itself.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.catalog import SuiteSpec
from bench.data.holdout import HELD_OUT_FRACTION
from bench.report.leaderboard import Leaderboard, dataset_column, suite_columns
from bench.report.overlaps import WITHOUT_OVERLAPS
from bench.runs.record import RANDOM_INIT
from bench.files import write_atomically

MISSING = "–"
OVERLAP_MARK = " †"
MEMORY_KINDS = {
    "cuda": "CUDA max allocated",
    "rss": "peak resident set of the process during the run (CPU)",
    "rss-process": "peak resident set since the process started (CPU; may include earlier work)",
}


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` without rounding; missing cells stay empty (never 0)."""
    write_atomically(path, table.to_csv(index=False).encode())
    return path


def write_markdown(text: str, path: Path) -> Path:
    write_atomically(path, text.encode())
    return path


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a GitHub markdown table, cells exactly as formatted (no re-parsing of numbers)."""
    return table.to_markdown(index=False, disable_numparse=True)


def percent(value: float) -> str:
    """A fraction as percent with one decimal, or the missing marker."""
    return MISSING if _missing(value) else f"{100 * value:.1f}"


def interval(mean: float, half_width: float) -> str:
    """``"45.3 ± 1.2"``; a mean without an interval (one replicate) is marked ``(n=1)``, never ``± 0``."""
    if _missing(mean):
        return MISSING
    if _missing(half_width):
        return f"{percent(mean)} (n=1)"
    return f"{percent(mean)} ± {100 * half_width:.1f}"


def count(value: float) -> str:
    """A parameter count compactly: ``950``, ``12.3K``, ``4.56M``, ``1.23B``."""
    if _missing(value):
        return MISSING
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def number(value: float, digits: int) -> str:
    return MISSING if _missing(value) else f"{value:.{digits}f}"


def leaderboard_markdown(board: Leaderboard) -> str:
    """The leaderboard as a markdown table followed by the notes that define its columns."""
    table = board.table
    shown = table[["model", "method", "shots"]].copy()
    for suite in board.suites:
        columns = suite_columns(suite.name, board.metric)
        means, half_widths = table[columns.mean], table[columns.ci95]
        shown[f"{suite.name} {board.metric} (%)"] = [interval(m, h) for m, h in zip(means, half_widths)]
        counts = zip(table[columns.n], table[columns.replicates])
        shown[f"{suite.name} n"] = [f"{complete}/{total}" if total else MISSING for complete, total in counts]
    shown["trainable %"] = [_trainable_percent(p) for p in table["trainable_percent"]]
    shown["trainable params"] = [count(p) for p in table["trainable_params"]]
    shown["effective params"] = [count(p) for p in table["effective_params"]]
    shown["stored MB"] = [_megabytes(m) for m in table["stored_mb"]]
    shown["peak memory (GiB)"] = [number(m, 2) for m in table["peak_memory_gib"]]
    shown["train img/s"] = [number(s, 1) for s in table["train_images_per_s"]]
    if board.has_retention:
        shown[f"retention {board.metric} (%)"] = [percent(v) for v in table["retention"]]
        shown["retention drop"] = [MISSING if pd.isna(v) else f"{100 * v:+.1f}" for v in table["retention_drop"]]
    shown["hyper-parameters (datasets)"] = list(table["hyperparameters"])
    for dataset in board.datasets:
        shown[dataset] = [percent(v) + (OVERLAP_MARK if board.overlapping(model, dataset) else "")
                          for v, model in zip(table[dataset_column(dataset, board.metric)], table["base_model"])]
    tunings = sorted(set("; ".join(table["tuning"]).split("; ")))
    heading = f"# Leaderboard: test {board.metric}, {board.protocol_phrase}; hyper-parameters: {'; '.join(tunings)}"
    return f"{heading}\n\n{markdown_table(shown)}\n\n{_leaderboard_notes(board)}\n"


def by_shots_markdown(board: Leaderboard, by_shots: pd.DataFrame) -> str:
    """The per-shots table (rows: model and method; columns: shots) with its note."""
    shown = by_shots[["model", "method"]].copy()
    labels = [column[: -len(" mean")] for column in by_shots.columns if column.endswith(" mean")]
    for label in labels:
        header = "full" if label == "full" else f"{label}-shot"
        shown[header] = [interval(m, h) for m, h in zip(by_shots[f"{label} mean"], by_shots[f"{label} ci95"])]
    note = (
        f"Test {board.metric} (%) of {_suite_phrase(board)}, mean ± half-width of the Student-t 95% interval over seed "
        f"replicates; (n=1): a single replicate, which has no interval; {MISSING}: no complete replicate at those shots. "
        "The replicate counts are in leaderboard_by_shots.csv."
    )
    return markdown_table(shown) + "\n\n" + note + "\n"


def _leaderboard_notes(board: Leaderboard) -> str:
    kinds = sorted({kind for cell in board.table["peak_memory_kind"].dropna() for kind in cell.split("+")})
    memory = "; ".join(f"{kind}: {MEMORY_KINDS.get(kind, kind)}" for kind in kinds)
    notes = [
        f"Scores are test-split {board.metric} in percent. Suite scores ({_suites_phrase(board)}) are computed per seed "
        "replicate (one split seed and train seed) and shown as mean ± half-width of the Student-t 95% interval over "
        "replicates; (n=1) marks a single replicate, which has no interval.",
        "n: complete replicates (a score on every dataset of the suite) / replicates with any of them; only complete "
        "replicates enter the suite score. Per-dataset columns are means over the seeds run on that dataset.",
        f"{MISSING}: no finished run with a defined score for that cell; nothing is filled in.",
        "Trainable parameters (allocated with a gradient), effective parameters (those of them that can change the "
        "output), stored MB (10^6 bytes of the trained tensors as saved) and training images/s are means over the "
        f"row's runs; peak memory is the largest ({memory}).",
        "Hyper-parameters: `defaults` are each method's sourced defaults (`run_bench.py --list --verbose` says where each "
        "comes from); otherwise the values `--tune` selected on the validation split, with the number of datasets each "
        "was selected for (results/tuning.md lists every trial).",
        "Rows are grouped by model and shots and sorted by the first suite score, best first. leaderboard.csv holds "
        "the same numbers unrounded, as fractions.",
    ]
    if board.held_out:
        notes.append(f"Validation of {', '.join(board.held_out)} was held out of the training images (README: \"Held-out "
                     "validation\"): their validation file is their test file, so full-data runs there trained on "
                     f"{1 - HELD_OUT_FRACTION:.0%} of the training images.")
    if board.overlaps:
        notes.append(overlaps_note(board))
    if board.has_retention:
        notes.append(f"Retention: test {board.metric} of the row's selected weights on its model's retention set (data of "
                     "its pre-training world that tuning never sees; datasets/models.yaml), mean over the row's runs; "
                     "retention drop: the zero-shot row's retention minus the row's, in points (positive: the method "
                     f"made the model forget; {MISSING} without a zero-shot row of that model).")
    if board.table["model"].str.endswith(RANDOM_INIT).any():
        notes.append(f"Models marked {RANDOM_INIT} were randomly initialised (--random-init): their scores measure "
                     "nothing learned, only cost.")
    return "\n".join(f"- {note}" for note in notes)


def overlaps_note(board: Leaderboard) -> str:
    """Which scores carry the overlap mark and why, each claim with its source."""
    pairs = "; ".join(f"{o.model} on {o.dataset}: pre-trained on {o.corpus} ({o.pretraining_source}), which {o.dataset} "
                      f"overlaps ({o.claim})" for o in board.overlaps)
    derived = [suite.name for suite in board.suites if suite.name.endswith(WITHOUT_OVERLAPS)]
    without = f" The suites {', '.join(derived)} leave the flagged datasets out." if derived else ""
    return (f"{OVERLAP_MARK.strip()}: the model was pre-trained on data this dataset is known to overlap, so its score "
            f"there is not a clean transfer result: {pairs}.{without}")


def _suite_phrase(board: Leaderboard) -> str:
    return f"the {_suite_definition(board.primary)}"


def _suites_phrase(board: Leaderboard) -> str:
    return "; ".join(_suite_definition(suite) for suite in board.suites)


def _suite_definition(suite: SuiteSpec) -> str:
    count = len(suite.datasets)
    return f"{suite.name} score: {suite.aggregation} over {count} dataset{'' if count == 1 else 's'}"


def _trainable_percent(value: float) -> str:
    """Enough digits to tell 0.04% from 0.4%: parameter-efficient methods live far below 1%."""
    return MISSING if _missing(value) else f"{value:.3g}"


def _megabytes(value: float) -> str:
    """Three significant digits (a prompt's 0.004 MB is not 0.00), whole megabytes from 100 (926, not 9.26e+02)."""
    if _missing(value):
        return MISSING
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _missing(value: float) -> bool:
    return bool(pd.isna(value))
