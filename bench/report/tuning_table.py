"""How every tuned row's hyper-parameters were chosen: each trial's validation score, the selection.

Built from the stored trial records (validation metrics only; trials never see test) and the
selected-setting records, so a reader can trace each leaderboard number back to the search that
chose its setting: the fields tuned, the trial values, their validation AP, and what was selected.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from bench.runs.record import RunRecord

METRIC = "AP"


def _setting(values: dict) -> str:
    return ", ".join(f"{name}={value:.3g}" for name, value in sorted(values.items()))


def tuning_table(trials: Sequence[RunRecord], finals: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per trial: model, method, shots, dataset, setting, its validation AP (%), and whether it
    is the setting selected for that dataset (per-dataset scope) or for the sweep (suite scope)."""
    selected = {}
    for record in finals:
        s = record.spec
        if s.tuning.get("stage") == "selected":
            selected[(s.model, s.method_label, s.shots_label, s.dataset)] = (_setting(s.tuned_values), s.tuning.get("scope", ""))
    rows = []
    for record in trials:
        s = record.spec
        setting = _setting(s.tuned_values)
        chosen, scope = selected.get((s.model, s.method_label, s.shots_label, s.dataset), ("", ""))
        rows.append({
            "model": s.model, "method": s.method_label, "shots": s.shots_label, "dataset": s.dataset,
            "setting": setting, f"val {METRIC} (%)": 100 * record.val.get(METRIC, float("nan")),
            "selected": "yes" if setting == chosen else "", "scope": scope,
        })
    columns = ["model", "method", "shots", "dataset", "setting", f"val {METRIC} (%)", "selected", "scope"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["model", "method", "shots", "dataset", "setting"], kind="stable").reset_index(drop=True)


def tuning_markdown(table: pd.DataFrame) -> str:
    """The trials as a markdown table, with what the columns mean."""
    if table.empty:
        return ""
    return "\n".join([
        "# Tuning trials",
        "",
        table.to_markdown(index=False, floatfmt=".1f"),
        "",
        "- Every trial was trained on the sweep's first seed replicate and scored on the validation split only;",
        "  `selected` marks the setting each method's replicates were then trained with and scored on test.",
        "- Scope `dataset`: one selection per dataset; `suite`: one per method, the best mean validation AP over the",
        "  sweep's datasets.",
        "",
    ])
