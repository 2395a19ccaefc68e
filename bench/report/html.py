"""The report as one self-contained web page, ``index.html``: the leaderboard, the per-dataset scores,
the comparisons and the figures, with sortable columns and filters.

Everything lives inside the file (styles, a little plain JavaScript, the figures as inline SVG), so the
page opens from disk on a cluster's login node or on a laptop without network, and can be archived
or mailed as it is. Jinja2 renders it with autoescaping on, since method labels and option values
come from the command line; only the SVG files that matplotlib wrote are inserted verbatim. Nothing
time-dependent goes in, so rewriting an unchanged report changes no bytes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from bench.data.holdout import HELD_OUT_FRACTION
from bench.files import write_atomically
from bench.report.frame import ROW, shots_order
from bench.report.leaderboard import Leaderboard, dataset_column, suite_columns
from bench.report.tables import OVERLAP_MARK, count, number, overlaps_note, percent
from bench.runs.record import RANDOM_INIT
from bench.runs.store import RunStore
from bench.tuning.presets import SEPARATOR

PAGE = "index.html"
TEMPLATE = "index.html.j2"
MISSING = "missing"
# What precedes <svg> in a matplotlib file; an XML prolog or DOCTYPE inside an HTML body is not markup.
SVG_PROLOG = re.compile(r"\A\s*(?:<\?xml[^>]*\?>\s*)?(?:<!DOCTYPE[^>]*>\s*)?")


@dataclass(frozen=True)
class Cell:
    """A table cell: ``text`` as shown, ``value`` what sorting compares (empty for a missing value,
    which sorts last in either direction), ``title`` a tooltip."""

    text: str
    value: str
    missing: bool = False
    title: str = ""


@dataclass(frozen=True)
class Column:
    """A column header; ``numeric`` columns sort by number, ``suite`` marks the columns of one suite
    (the suite filter hides the others)."""

    header: str
    numeric: bool = True
    suite: str = ""


@dataclass(frozen=True)
class Link:
    href: str
    label: str


@dataclass(frozen=True)
class Row:
    """One table row; ``model``, ``shots`` and ``family`` are what the filters match, ``records`` the
    run records behind the row."""

    model: str
    shots: str
    family: str
    cells: tuple[Cell, ...]
    records: tuple[Link, ...] = ()


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class InlineSvg:
    name: str
    svg: Markup


def write_html(
    board: Leaderboard, frame: pd.DataFrame, comparisons: pd.DataFrame, figures: Sequence[Path], out_dir: Path
) -> Path:
    """Write ``out_dir/index.html`` and return its path.

    ``frame`` is the runs frame the board was built from (its ``key`` column names each row's record
    files, linked relative to ``out_dir``), ``comparisons`` the table of
    :func:`bench.report.comparison_tables.comparisons_table` (its section is left out when it is
    empty), ``figures`` the written figure files, of which the SVGs are inlined.
    """
    environment = Environment(
        loader=PackageLoader("bench.report", "templates"), autoescape=True, undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    leaderboard = _leaderboard(board, frame, out_dir)
    page = environment.get_template(TEMPLATE).render(
        title=f"Leaderboard: test {board.metric}, {board.protocol_phrase}",
        notes=_notes(board),
        suites=[suite.name for suite in board.suites],
        filters=_filters(leaderboard),
        leaderboard=leaderboard,
        per_dataset=_per_dataset(board),
        comparisons=_comparisons(comparisons, board.metric) if len(comparisons) else None,
        figures=[InlineSvg(path.stem, _inline_svg(path)) for path in figures if path.suffix == ".svg"],
    )
    path = Path(out_dir) / PAGE
    write_atomically(path, page.encode())
    return path


def _method_family(method: str) -> str:
    """The registered method behind a leaderboard label: ``lora`` for ``lora[rank=8]`` or ``lora@sdpt``."""
    return method.split("[", 1)[0].split(SEPARATOR, 1)[0]


def _inline_svg(path: Path) -> Markup:
    """The SVG file as markup to place in the page: trusted, since the report's own figures wrote it."""
    return Markup(SVG_PROLOG.sub("", path.read_text(encoding="utf-8"), count=1))


def _notes(board: Leaderboard) -> list[str]:
    """How the numbers were obtained, in the terms of leaderboard.md, which defines every column in full."""
    table = board.table
    tunings = sorted(set("; ".join(table["tuning"]).split("; ")))
    counts = {n for suite in board.suites for n in table[suite_columns(suite.name, board.metric).replicates]}
    replicates = f"{min(counts)} to {max(counts)}" if len(counts) > 1 else f"{min(counts)}"
    suites = "; ".join(f"{s.name}: {s.aggregation} over {len(s.datasets)} dataset{'s' * (len(s.datasets) != 1)}"
                       for s in board.suites)
    lines = [
        f"Test-split {board.metric} in percent, from runs under {board.protocol_phrase}; hyper-parameters: "
        f"{'; '.join(tunings)}.",
        f"Suite scores ({suites}) are computed per seed replicate (one split seed and train seed) and shown as "
        "mean ± half-width of the Student-t 95% interval over replicates, then (n): the complete replicates, "
        "those with a score on every dataset of the suite; n=2/3 means one of three replicates lacks a dataset "
        f"and is left out. Rows have {replicates} replicates.",
        f"{MISSING}: no finished run with a defined value for that cell; nothing is filled in.",
    ]
    if board.held_out:
        lines.append(f"Validation of {', '.join(board.held_out)} was held out of the training images: full-data runs "
                     f"there trained on {1 - HELD_OUT_FRACTION:.0%} of them.")
    if board.overlaps:
        lines.append(overlaps_note(board))
    if table["model"].str.endswith(RANDOM_INIT).any():
        lines.append(f"Models marked {RANDOM_INIT} were randomly initialised: their scores measure only cost.")
    lines.append("leaderboard.md and comparisons.md define every column; the CSV files hold the numbers unrounded.")
    return lines


def _leaderboard(board: Leaderboard, frame: pd.DataFrame, out_dir: Path) -> Table:
    """One row per (model, method, shots): suite scores, costs, hyper-parameters and the record files."""
    records = _record_links(frame, board.datasets, out_dir)
    suites = [(suite.name, suite_columns(suite.name, board.metric)) for suite in board.suites]
    columns = (
        *_row_columns(),
        *(Column(f"{name} {board.metric} (%)", suite=name) for name, _ in suites),
        Column("trainable params"), Column("trainable %"), Column("stored MB"), Column("peak memory (GiB)"),
        Column("train img/s"),
        *((Column(f"retention {board.metric} (%)"), Column("retention drop")) if board.has_retention else ()),
        Column("hyper-parameters (datasets)", numeric=False),
    )
    rows = []
    for _, row in board.table.iterrows():
        scores = [_suite_cell(row[c.mean], row[c.ci95], row[c.n], row[c.replicates]) for _, c in suites]
        costs = [
            _number(row["trainable_params"], count), _number(row["trainable_percent"], lambda v: f"{v:.3g}"),
            _number(row["stored_mb"], lambda v: f"{v:.3g}"), _number(row["peak_memory_gib"], lambda v: number(v, 2)),
            _number(row["train_images_per_s"], lambda v: number(v, 1)),
            *((_number(row["retention"], percent), _number(row["retention_drop"], lambda v: f"{100 * v:+.1f}"))
              if board.has_retention else ()),
            _text(row["hyperparameters"]),
        ]
        identity = (row["model"], row["method"], row["shots"])
        rows.append(_row(row, [*scores, *costs], records.get(identity, ())))
    return Table(columns, tuple(rows))


def _per_dataset(board: Leaderboard) -> Table:
    """The mean score over seeds per row and dataset, in the leaderboard's row order."""
    columns = (*_row_columns(), *(Column(dataset) for dataset in board.datasets))
    rows = tuple(
        _row(row, [_dataset_cell(board, row, d) for d in board.datasets])
        for _, row in board.table.iterrows()
    )
    return Table(columns, rows)


def _dataset_cell(board: Leaderboard, row: pd.Series, dataset: str) -> Cell:
    """A per-dataset mean, marked where the row's model was pre-trained on data the dataset overlaps."""
    cell = _number(row[dataset_column(dataset, board.metric)], percent)
    if cell.missing or not board.overlapping(row["base_model"], dataset):
        return cell
    claims = "; ".join(f"pre-trained on {o.corpus}: {o.claim}" for o in board.overlaps
                       if o.model == row["base_model"] and o.dataset == dataset)
    return dataclasses.replace(cell, text=cell.text + OVERLAP_MARK, title=claims)


def _comparisons(comparisons: pd.DataFrame, metric: str) -> Table:
    """Paired differences to each group's reference and average ranks, one row per leaderboard row."""
    columns = (
        Column("model", numeric=False), Column("shots"), Column("method", numeric=False),
        Column("reference", numeric=False), Column("pairs"), Column(f"Δ {metric} (points)"), Column("95% CI"),
        Column("Wilcoxon p"), Column("Holm p"), Column("average rank"), Column("Friedman p"),
        Column("note", numeric=False),
    )
    rows = []
    for _, row in comparisons.iterrows():
        paired = ([_reference_itself()] * 5 if row["method"] == row["reference"] else [
            _number(row["pairs"], lambda v: f"{v:.0f}"), _number(row["mean_difference_points"], lambda v: f"{v:+.2f}"),
            _number(row["ci95_low_points"], lambda low: f"[{low:+.2f}, {row['ci95_high_points']:+.2f}]"),
            _number(row["wilcoxon_p"], lambda v: f"{v:.3g}"), _number(row["holm_p"], lambda v: f"{v:.3g}"),
        ])
        cells = [
            _text(row["model"]), _shots(row["shots"]), _text(row["method"]), _text(row["reference"]), *paired,
            _number(row["average_rank"], lambda v: number(v, 2)), _number(row["friedman_p"], lambda v: f"{v:.3g}"),
            _text("; ".join(note for note in (row["paired_note"], row["rank_note"]) if isinstance(note, str) and note)),
        ]
        rows.append(Row(row["model"], row["shots"], _method_family(row["method"]), tuple(cells)))
    return Table(columns, tuple(rows))


def _row_columns() -> tuple[Column, ...]:
    return Column("model", numeric=False), Column("method", numeric=False), Column("shots")


def _row(row: pd.Series, cells: list[Cell], records: tuple[Link, ...] = ()) -> Row:
    identity = [_text(row["model"]), _text(row["method"]), _shots(row["shots"])]
    return Row(row["model"], row["shots"], _method_family(row["method"]), (*identity, *cells), records)


def _suite_cell(mean: float, half_width: float, complete: int, replicates: int) -> Cell:
    """``45.0 ± 3.1 (n=3)``; ``(n=2/3)`` when a replicate is incomplete; no ``±`` for a single replicate."""
    if pd.isna(mean):
        return _missing(f"no complete seed replicate ({complete} of {replicates})")
    spread = "" if pd.isna(half_width) else f" ± {100 * half_width:.1f}"
    n = f"{complete}" if complete == replicates else f"{complete}/{replicates}"
    return Cell(f"{percent(mean)}{spread} (n={n})", repr(float(mean)))


def _number(value: float, shown: Callable[[float], str]) -> Cell:
    if pd.isna(value):
        return _missing("")
    return Cell(shown(value), repr(float(value)))


def _text(value: str) -> Cell:
    return Cell(value, value)


def _shots(label: str) -> Cell:
    """Sorted numerically, ``full`` after every shot count."""
    is_full, shots = shots_order(label)
    return Cell(label, repr(math.inf if is_full else float(shots)))


def _reference_itself() -> Cell:
    """A paired column of the reference's own row: not a missing result, nothing to compare."""
    return Cell("–", "", title="the reference: every other row of its group is compared with it")


def _missing(title: str) -> Cell:
    return Cell(MISSING, "", missing=True, title=title)


def _record_links(frame: pd.DataFrame, datasets: Sequence[str], out_dir: Path) -> dict[tuple, tuple[Link, ...]]:
    """Per row, a link to each record file, labelled ``dataset, seed s`` and ordered by dataset then seeds."""
    store, order = RunStore(Path(out_dir) / "runs"), {name: i for i, name in enumerate(datasets)}
    links = {}
    for identity, runs in frame.groupby(ROW, sort=False):
        runs = runs.assign(position=runs["dataset"].map(order)).sort_values(["position", "split_seed", "train_seed"])
        links[identity] = tuple(
            Link(quote(store.result_path(key).relative_to(out_dir).as_posix()), _seeds_label(dataset, split, train))
            for key, dataset, split, train in zip(runs["key"], runs["dataset"], runs["split_seed"], runs["train_seed"])
        )
    return links


def _seeds_label(dataset: str, split_seed: object, train_seed: int) -> str:
    """``a, seed 0`` when the split seed is the train seed or unused (full data), else both."""
    if pd.isna(split_seed) or split_seed == train_seed:
        return f"{dataset}, seed {train_seed}"
    return f"{dataset}, split seed {split_seed}, train seed {train_seed}"


def _filters(table: Table) -> dict[str, list[str]]:
    """The values each filter offers: shots in numeric order, models and method families alphabetically."""
    return {
        "shots": sorted({row.shots for row in table.rows}, key=shots_order),
        "model": sorted({row.model for row in table.rows}),
        "family": sorted({row.family for row in table.rows}),
    }
