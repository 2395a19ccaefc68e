"""Zero-shot scores next to the published ones: does this set-up reproduce the paper?

The catalog carries published per-dataset scores with their source (``published`` in a model
entry). Before anyone trusts a tuning comparison on real weights, the zero-shot row should land
within a few points of those numbers; a dataset far off points at the weights, the data version or
the evaluation, not at any tuning method. Only zero-shot rows of pre-trained models are compared.
"""

from __future__ import annotations

import pandas as pd

from bench.catalog import Catalog
from bench.data.holdout import DECLARED
from bench.report.retention import ZERO_SHOT
from bench.report.tables import markdown_table, number

COLUMNS = ["model", "weights", "dataset", "split", "measured", "published", "difference", "tolerance", "within", "source"]


def published_comparison(frame: pd.DataFrame, catalog: Catalog, metric: str) -> pd.DataFrame:
    """One row per (model, weights, dataset) with a zero-shot run and a published zero-shot ``metric``
    for those weights, on the split the table names: scores in percent, ``difference`` measured minus
    published, ``within`` whether it is inside the table's tolerance. Empty when nothing compares."""
    runs = frame[(frame["method"] == ZERO_SHOT) & frame["base_model"].notna()]
    rows = []
    for (model, weights, dataset), group in runs.groupby(["base_model", "weights_name", "dataset"], sort=True):
        if model not in catalog.models:
            continue
        for table in catalog.models.get(model).published:
            if (table.setting != ZERO_SHOT or table.metric != metric or dataset not in table.values
                    or table.weights not in (None, weights)):
                continue
            # A validation score counts only where validation was the dataset's own split, as published.
            scores = group["score"] if table.split == "test" else group.loc[group["validation"] == DECLARED, "val_score"]
            if scores.dropna().empty:
                continue
            measured, published = 100 * float(scores.mean()), table.values[dataset]
            difference = measured - published
            rows.append({"model": model, "weights": weights, "dataset": dataset, "split": table.split, "measured": measured, "published": published,
                         "difference": difference, "tolerance": table.tolerance,
                         "within": abs(difference) <= table.tolerance, "source": table.source})
    return pd.DataFrame(rows, columns=COLUMNS)


def published_markdown(table: pd.DataFrame, metric: str) -> str:
    """The comparison as markdown with a note on how to read it."""
    shown = table[["model", "weights", "dataset", "split"]].copy()
    for column in ("measured", "published", "difference"):
        shown[f"{column} {metric} (%)" if column != "difference" else "difference"] = [
            number(v, 1) for v in table[column]]
    shown["verdict"] = [f"within ±{t:g}" if ok else f"OFF by more than {t:g}" for ok, t in zip(table["within"], table["tolerance"])]
    shown["source"] = list(table["source"])
    off = int((~table["within"].astype(bool)).sum())
    note = (f"Zero-shot test {metric} of this set-up against the published number for the same model and dataset. "
            f"{off} of {len(table)} differ by more than the table's tolerance"
            + (": check the weights file, the dataset version and the evaluation split before comparing tuning methods."
               if off else "."))
    return f"# Zero-shot against published numbers\n\n{markdown_table(shown)}\n\n- {note}\n"
