"""The HTML leaderboard (results/index.html), read back with the standard library's HTML parser.

The page must hold one row per (model, method, shots) with the numbers of the markdown leaderboard,
say "missing" where there is no number, link each row to the record files behind it, escape labels
that come from the command line, need nothing outside itself, and rewrite to identical bytes.
"""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from bench.report import ReportFiles, runs_frame, write_report
from bench.report.frame import ROW
from bench.runs.record import RunRecord
from bench.runs.store import RunStore
from tests.test_report import MINI, RECORDS, sweep

LABEL = "<b>"
"""An option value with markup in it: the method label lora[note=<b>] must show as text."""


def labelled(records: list[RunRecord], **options: str) -> list[RunRecord]:
    """The records with method options added (their leaderboard label says so) and keys of their own."""
    return [
        dataclasses.replace(record, key=f"{record.key}-options",
                            spec=dataclasses.replace(record.spec, method_options=options))
        for record in records
    ]


# RECORDS (10-shot sdpt, lora, vpt, adapter; adapter never ran on b), a 3-shot sdpt row, and a lora row
# whose label holds markup: six rows in two shot groups, method families adapter, lora, sdpt, vpt.
RESULTS = [
    *RECORDS,
    *sweep("sdpt", {"a": [0.30], "b": [0.36]}, shots=3),
    *labelled(sweep("lora", {"a": [0.33, 0.35], "b": [0.45, 0.47]}), note=LABEL),
]


def write_results(out_dir: Path) -> ReportFiles:
    """RESULTS stored as a sweep stores them (runs/done/<key>.json), then reported."""
    store = RunStore(out_dir / "runs")
    for record in RESULTS:
        store.save_result(record)
    return write_report(RESULTS, out_dir, suites=[MINI])


def expected_rows() -> set[tuple[str, str, str]]:
    return set(runs_frame(RESULTS)[ROW].itertuples(index=False, name=None))


class Page(HTMLParser):
    """The page's tables (id -> rows, each row its attributes, cells and links) and every URL attribute."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.urls: list[str] = []
        self.selects: dict[str, list[str]] = {}
        self.tags: set[str] = set()
        self._table: str | None = None
        self._row: dict | None = None
        self._cell: dict | None = None
        self._select: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "xlink:href", "action")]
        if tag == "table":
            self._table = found.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": found, "cells": [], "links": []}
        elif tag == "td" and self._row is not None:
            self._cell = {"attrs": found, "text": ""}
        elif tag == "a" and self._row is not None:
            self._row["links"].append(found["href"])
        elif tag == "select":
            self._select = self.selects.setdefault(found.get("data-filter") or found.get("id", ""), [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:  # the header row has none
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        elif self._select is not None and data.strip():
            self._select.append(data.strip())


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def page(report: ReportFiles) -> Page:
    return Page(report.html.read_text(encoding="utf-8"))


def identity(row: dict) -> tuple[str, str, str]:
    return tuple(cell["text"] for cell in row["cells"][:3])


def by_method(rows: list[dict], method: str, shots: str = "10") -> dict:
    (row,) = [row for row in rows if identity(row)[1:] == (method, shots)]
    return row


def test_the_page_is_written_to_the_results_folder(report: ReportFiles) -> None:
    assert report.html == report.leaderboard_csv.parent / "index.html"


@pytest.mark.parametrize("table", ["leaderboard", "per-dataset", "comparisons"])
def test_one_row_per_model_method_and_shots(page: Page, table: str) -> None:
    rows = page.tables[table]
    key = identity if table != "comparisons" else lambda row: tuple(row["cells"][i]["text"] for i in (0, 2, 1))
    assert sorted(map(key, rows)) == sorted(expected_rows())


def test_suite_cells_show_mean_interval_and_complete_replicates(page: Page) -> None:
    rows = page.tables["leaderboard"]
    suite = {method: by_method(rows, method)["cells"][3]["text"] for method in ("sdpt", "lora", "vpt")}
    assert suite["sdpt"].startswith("45.0 ± ") and suite["sdpt"].endswith("(n=3)")
    assert suite["lora"].endswith("(n=2/3)")  # one replicate lacks dataset b
    assert suite["vpt"] == "25.0 (n=1)"  # no interval from one replicate
    assert by_method(rows, "sdpt")["cells"][3]["attrs"]["data-value"] == "0.45"  # what sorting compares


def test_a_missing_value_says_missing(page: Page) -> None:
    suite_cell = by_method(page.tables["leaderboard"], "adapter")["cells"][3]
    b_cell = by_method(page.tables["per-dataset"], "adapter")["cells"][4]
    for cell in (suite_cell, b_cell):
        assert cell["text"] == "missing"
        assert "missing" in cell["attrs"]["class"].split()
        assert cell["attrs"]["data-value"] == ""  # sorts last, never as 0


def test_record_links_point_at_each_rows_record_files(page: Page, report: ReportFiles) -> None:
    results = report.html.parent
    for row in page.tables["leaderboard"]:
        model, method, shots = identity(row)
        expected = {r.key for r in RESULTS if (r.spec.model_label, r.spec.method_label, r.spec.shots_label) == (
            model, method, shots)}
        linked = [unquote(href) for href in row["links"]]
        assert all((results / href).is_file() for href in linked), linked
        assert sorted(Path(href).stem for href in linked) == sorted(expected), (model, method, shots)
        assert all(href.startswith("runs/done/") for href in linked)


def test_filters_offer_shots_models_and_method_families(page: Page) -> None:
    assert page.selects["shots"] == ["all", "3", "10"]
    assert page.selects["model"] == ["all", "glip-t"]
    assert page.selects["family"] == ["all", "adapter", "lora", "sdpt", "vpt"]  # lora[note=<b>] is a lora
    assert "suite-filter" not in page.selects  # one suite: nothing to choose


def test_the_page_needs_nothing_outside_itself(page: Page, report: ReportFiles) -> None:
    for url in page.urls:
        parsed = urlparse(url)
        # relative paths, fragments (#glyph), and images inside a figure (data:image/png)
        assert parsed.scheme in ("", "data") and not parsed.netloc and not url.startswith("/"), url[:80]
    assert not page.tags & {"link", "img", "iframe", "object", "embed"}
    text = report.html.read_text(encoding="utf-8")
    svgs = [path for path in (*report.figures, *report.critical_difference_figures) if path.suffix == ".svg"]
    assert svgs and text.count("<svg") == len(svgs)  # every figure inlined
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text


def test_a_label_with_markup_is_shown_as_text(page: Page, report: ReportFiles) -> None:
    label = f"lora[note={LABEL}]"
    assert by_method(page.tables["leaderboard"], label)["attrs"]["data-family"] == "lora"
    text = report.html.read_text(encoding="utf-8")
    assert "lora[note=&lt;b&gt;]" in text
    assert LABEL not in text and "b" not in page.tags


@pytest.mark.slow
def test_rewriting_unchanged_results_changes_no_bytes(report: ReportFiles) -> None:
    before = report.html.read_bytes()
    again = write_results(report.html.parent)
    assert again.html.read_bytes() == before
