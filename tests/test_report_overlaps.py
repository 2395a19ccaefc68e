"""Overlap flags, per-domain and overlap-free suite scores, and zero-shot scores against published ones.

A small catalog of its own: suite ``mini`` of datasets a (domain north), b and c (south); b is
declared to overlap ``webcorpus``, which the ``glip-t`` entry lists among its pre-training corpora,
and the entry carries published zero-shot APs for a and b.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from bench.catalog import Catalog
from bench.data.holdout import HELD_OUT
from bench.errors import BenchError
from bench.report import write_report
from bench.report.frame import runs_frame
from bench.report.overlaps import find_overlaps
from bench.report.tables import OVERLAP_MARK
from tests.test_report import make_record

CLAIM = "b's images were crawled into webcorpus (a test's claim)"
CATALOG = f"""
suite: {{name: mini, datasets: [a, b, c]}}
defaults:
  splits:
    train: {{images: train, annotations: train.json}}
    val: {{images: val, annotations: val.json}}
    test: {{images: test, annotations: test.json}}
datasets:
  a: {{root: a, domain: north}}
  b: {{root: b, domain: south, overlaps: {{webcorpus: "{CLAIM}"}}}}
  c: {{root: c, domain: south}}
models:
  glip-t:
    pretraining: [webcorpus, books]
    pretraining_source: "the model card (a test's claim)"
    published:
      - {{setting: zero-shot, metric: AP, source: "Table 9 of a test paper", tolerance: 2, values: {{a: 41.0, b: 10.0}}}}
      - {{setting: zero-shot, metric: AP, split: val, weights: glip-t.pth, source: "a val table", values: {{c: 25.0}}}}
      - {{setting: zero-shot, metric: AP, weights: another-checkpoint.pth, source: "not these weights", values: {{c: 1.0}}}}
"""


def write_catalog(folder: Path, text: str = CATALOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mini.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    return Catalog.from_folders([write_catalog(tmp_path_factory.mktemp("catalog"))])


RECORDS = [
    *(make_record("sdpt", d, ap, seed=s) for s in (0, 1) for d, ap in (("a", 0.50), ("b", 0.70), ("c", 0.30))),
    *(make_record("zero-shot", d, ap, shots=None) for d, ap in (("a", 0.40), ("b", 0.30), ("c", 0.20))),
]


def test_a_pair_is_flagged_when_the_model_was_pretrained_on_what_the_dataset_overlaps(catalog):
    overlaps = find_overlaps(catalog, ["glip-t", "glip-nano"], ["a", "b", "c"])
    assert [(o.model, o.dataset, o.corpus, o.claim) for o in overlaps] == [("glip-t", "b", "webcorpus", CLAIM)]
    assert find_overlaps(catalog, ["glip-nano"], ["b"]) == ()  # no entry, no declared corpora


def test_a_randomly_initialised_model_is_never_flagged(tmp_path, catalog):
    pretrained = make_record("sdpt", "b", 0.5)
    random_init = dataclasses.replace(pretrained, key="random", spec=dataclasses.replace(pretrained.spec, weights=None))
    assert list(runs_frame([pretrained, random_init])["base_model"].isna()) == [False, True]
    files = write_report([random_init], tmp_path, suites=[catalog.suite("mini")], catalog=catalog)
    assert OVERLAP_MARK not in files.leaderboard_markdown.read_text()


@pytest.fixture(scope="module")
def report(tmp_path_factory, catalog):
    return write_report(RECORDS, tmp_path_factory.mktemp("results"), suites=[catalog.suite("mini")], catalog=catalog)


def test_suites_are_also_scored_without_flagged_members_and_per_domain(report):
    table = report.leaderboard.set_index(["method", "shots"])
    sdpt = table.loc[("sdpt", "10")]
    assert sdpt["mini suite AP"] == pytest.approx((0.50 + 0.70 + 0.30) / 3)
    assert sdpt["mini without overlaps suite AP"] == pytest.approx((0.50 + 0.30) / 2)
    assert sdpt["mini/north suite AP"] == pytest.approx(0.50)
    assert sdpt["mini/south suite AP"] == pytest.approx((0.70 + 0.30) / 2)
    assert sdpt["mini suite n"] == 2  # the derived suites keep the replicates and their intervals
    assert not pd.isna(sdpt["mini without overlaps suite AP ci95"])


def test_flagged_scores_are_marked_and_the_note_gives_both_sources(report):
    text = report.leaderboard_markdown.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| glip-t")]
    for cells in rows:
        assert cells[columns.index("b")].endswith(OVERLAP_MARK.strip())
        assert not cells[columns.index("a")].endswith(OVERLAP_MARK.strip())
    assert f"glip-t on b: pre-trained on webcorpus (the model card (a test's claim)), which b overlaps ({CLAIM})" in text
    assert "mini without overlaps leave the flagged datasets out" in text


def test_zero_shot_rows_are_compared_with_the_published_scores(report):
    csv, markdown = report.published
    table = pd.read_csv(csv).set_index("dataset")
    assert list(table.index) == ["a", "b", "c"]  # c only from the table of these weights, on val
    assert table.loc["a", "difference"] == pytest.approx(-1.0) and bool(table.loc["a", "within"])
    assert table.loc["b", "difference"] == pytest.approx(20.0) and not bool(table.loc["b", "within"])
    assert table.loc["c", "split"] == "val" and table.loc["c", "measured"] == pytest.approx(20.0)  # its val score
    assert table.loc["c", "source"] == "a val table"
    text = markdown.read_text()
    assert "within ±2" in text and "OFF by more than 2" in text and "Table 9 of a test paper" in text
    assert "2 of 3 differ by more than the table's tolerance" in text


def test_a_validation_held_out_of_training_is_not_compared_with_a_published_val_score(tmp_path, catalog):
    held_out = dataclasses.replace(RECORDS[-1], spec=dataclasses.replace(RECORDS[-1].spec, validation=HELD_OUT))
    files = write_report([*RECORDS[:-1], held_out], tmp_path, suites=[catalog.suite("mini")], catalog=catalog)
    assert "c" not in set(pd.read_csv(files.published[0])["dataset"])


def test_no_comparison_file_without_zero_shot_rows(tmp_path, catalog):
    files = write_report(RECORDS[:6], tmp_path, suites=[catalog.suite("mini")], catalog=catalog)
    assert files.published == () and not (tmp_path / "published.md").exists()


@pytest.mark.parametrize("models, message", [
    ("  glip-t: {pretraining: [x]}\n", "needs 'pretraining'"),
    ("  glip-t: {pretraining: [x], pretraining_source: s, published: [{setting: zero-shot, metric: AP, source: s, "
     "values: {ghost: 1}}]}\n", "publishes a score for dataset 'ghost'"),
    ("  glip-t: {pretraining: [x], pretraining_source: s, published: [{setting: zero-shot, metric: AP, source: s, "
     "values: {a: high}}]}\n", "not a number"),
    ("  glip-t: {pretraining: [x], pretraining_source: s, colour: red}\n", r"unknown key\(s\) \['colour'\]"),
])
def test_bad_model_entries_are_refused_with_the_file_named(tmp_path, models, message):
    text = CATALOG[: CATALOG.index("models:")] + "models:\n" + models
    folder = write_catalog(tmp_path, text)
    with pytest.raises(BenchError, match=message) as caught:
        Catalog.from_folders([folder])
    assert str(folder / "mini.yaml") in str(caught.value) or "ghost" in str(caught.value)


def test_overlaps_must_name_their_source(tmp_path):
    folder = write_catalog(tmp_path, CATALOG.replace(f'{{webcorpus: "{CLAIM}"}}', "[webcorpus]"))
    with pytest.raises(BenchError, match="source of the claim"):
        Catalog.from_folders([folder])


def test_the_report_command_prints_the_published_comparison(tmp_path, catalog, capsys):
    from bench.cli import report as print_report

    print_report(RECORDS, tmp_path, catalog, suites=["mini"])
    out = capsys.readouterr().out
    assert "# Zero-shot against published numbers" in out and "OFF by more than 2" in out


def test_the_page_marks_flagged_scores_with_the_claim_as_tooltip(report):
    page = report.html.read_text()
    assert f"{OVERLAP_MARK.strip()}" in page and CLAIM.replace("'", "&#39;") in page
