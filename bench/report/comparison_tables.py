"""The comparisons as CSV (one row per model, shots and method, unrounded) and markdown (one section per group).

Each number that is not shown comes with the reason in words. A p-value that is absent because
the test could not reach significance at this number of pairs or datasets must never be read as
"not significant". The markdown ends with notes that define every column, so that a table pasted
elsewhere still explains itself.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from bench.report.compare import GroupComparison
from bench.report.figures import shots_title
from bench.report.leaderboard import Leaderboard
from bench.report.ranks import MIN_DATASETS, MIN_METHODS, RankComparison
from bench.report.tables import MISSING, markdown_table, number

CSV_COLUMNS = [
    "model", "shots", "method", "reference", "reference_chosen", "pairs", "broadcast", "mean_difference_points",
    "ci95_low_points", "ci95_high_points", "wilcoxon_p", "holm_p", "paired_note", "average_rank", "ranked_datasets",
    "friedman_chi2", "friedman_p", "nemenyi_cd", "rank_note",
]


def comparisons_table(
    board: Leaderboard, paired: Sequence[GroupComparison], ranks: Sequence[RankComparison]
) -> pd.DataFrame:
    """Every row of the leaderboard with its paired comparison to its group's reference and its average rank.

    Group-level values (reference, Friedman, CD) repeat on each row of the group. Differences are in
    AP points. The reference's own row has no paired values.
    """
    by_group = {(r.model, r.shots): r for r in ranks}
    rows = []
    for group in paired:
        rank = by_group.get((group.model, group.shots))
        in_group = (board.table["model"] == group.model) & (board.table["shots"] == group.shots)
        methods = board.table.loc[in_group, "method"]
        table = group.table.set_index("method")
        for method in methods:
            rows.append(_paired_cells(group, table, method) | _rank_cells(rank, method) | {"method": method})
    counts = {"pairs": "Int64", "ranked_datasets": "Int64"}  # counts, left empty where they do not apply
    return pd.DataFrame(rows, columns=CSV_COLUMNS).astype(counts)


def comparisons_markdown(
    board: Leaderboard, paired: Sequence[GroupComparison], ranks: Sequence[RankComparison]
) -> str:
    """One section per (model, shots): the paired table, the rank table, Friedman's line; then the notes."""
    by_group = {(r.model, r.shots): r for r in ranks}
    parts = [f"# Comparisons: test {board.metric}, {board.protocol_phrase}"]
    for group in paired:
        parts.append(f"## {group.model}, {shots_title(group.shots)}")
        parts.append(_paired_section(group, board.metric))
        parts.append(_rank_section(by_group.get((group.model, group.shots))))
    parts.append("## Notes\n\n" + _notes(board.metric))
    return "\n\n".join(parts) + "\n"


def _paired_cells(group: GroupComparison, table: pd.DataFrame, method: str) -> dict[str, object]:
    cells: dict[str, object] = {
        "model": group.model, "shots": group.shots, "reference": group.reference or "",
        "reference_chosen": group.chosen,
    }
    if method not in table.index:
        return cells | {"paired_note": group.note or ("reference" if method == group.reference else "")}
    row = table.loc[method]
    return cells | {
        "pairs": row["pairs"], "broadcast": row["broadcast"], "mean_difference_points": row["mean_difference"],
        "ci95_low_points": row["ci95_low"], "ci95_high_points": row["ci95_high"], "wilcoxon_p": row["wilcoxon_p"],
        "holm_p": row["holm_p"], "paired_note": row["note"],
    }


def _rank_cells(rank: RankComparison | None, method: str) -> dict[str, object]:
    if rank is None:
        return {"rank_note": "no scored run"}
    return {
        "average_rank": rank.average_ranks.get(method, math.nan), "ranked_datasets": len(rank.datasets),
        "friedman_chi2": rank.friedman_chi2, "friedman_p": rank.friedman_p, "nemenyi_cd": rank.critical_difference,
        "rank_note": rank.note,
    }


def _paired_section(group: GroupComparison, metric: str) -> str:
    if group.reference is None or group.table.empty:
        return f"Paired differences: none ({group.note or 'no other method in this group'})."
    chosen = f" ({group.chosen})" if group.chosen != "given" else ""
    heading = f"Paired differences to **{group.reference}**{chosen}: method − {group.reference}, in {metric} points."
    table = group.table
    shown = pd.DataFrame({
        "method": table["method"],
        "pairs": table["pairs"].astype(str),
        f"Δ {metric}": [_signed(v) for v in table["mean_difference"]],
        "95% CI": [_interval(low, high) for low, high in zip(table["ci95_low"], table["ci95_high"])],
        "Wilcoxon p": [_p(p) for p in table["wilcoxon_p"]],
        "Holm p": [_p(p) for p in table["holm_p"]],
        "note": [_note(row) for _, row in table.iterrows()],
    }, columns=["method", "pairs", f"Δ {metric}", "95% CI", "Wilcoxon p", "Holm p", "note"])
    return f"{heading}\n\n{markdown_table(shown)}"


def _rank_section(rank: RankComparison | None) -> str:
    if rank is None or rank.average_ranks.empty:
        return "Average ranks: none (no dataset that every method of the group has)."
    count = len(rank.datasets)
    heading = f"Average ranks over {count} dataset{'' if count == 1 else 's'} ({', '.join(rank.datasets)}); 1 is best."
    shown = pd.DataFrame({
        "method": rank.average_ranks.index, "average rank": [number(r, 2) for r in rank.average_ranks],
    })
    lines = [heading, markdown_table(shown), _friedman_line(rank)]
    if rank.left_out:
        missing = "; ".join(
            f"{dataset} (no score for {', '.join(methods)})" for dataset, methods in sorted(rank.left_out.items())
        )
        lines.append(f"Not ranked: {missing}.")
    return "\n\n".join(lines)


def _friedman_line(rank: RankComparison) -> str:
    k, n = len(rank.average_ranks), len(rank.datasets)
    if math.isnan(rank.friedman_chi2):
        return f"No Friedman test: {rank.note}."
    design = f"k = {k} methods, N = {n} datasets"
    cd = f"Nemenyi critical difference (α = 0.05) = {rank.critical_difference:.2f}"
    if rank.note:
        return f"Friedman χ² = {rank.friedman_chi2:.2f} ({design}), no p: {rank.note}. {cd}."
    return f"Friedman χ² = {rank.friedman_chi2:.2f} ({design}), p = {_p(rank.friedman_p)}. {cd}."


def _note(row: pd.Series) -> str:
    parts = [f"{row['broadcast']} broadcast: trains nothing, one replicate per dataset"] if row["broadcast"] else []
    parts += [row["note"]] if row["note"] else []
    return "; ".join(parts)


def _signed(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:+.2f}"


def _interval(low: float, high: float) -> str:
    return MISSING if pd.isna(low) else f"[{low:+.2f}, {high:+.2f}]"


def _p(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.3g}"


def _notes(metric: str) -> str:
    notes = [
        f"Δ {metric}: mean over pairs of method − reference in {metric} points (100 × the stored fraction); positive "
        "means better than the reference. A pair is one dataset and seed replicate (split seed, train seed) scored for "
        "both methods. When no reference is named, each group's is its best row in leaderboard.md.",
        "Broadcast: a method that trained nothing (0 steps) and has one replicate per dataset, such as zero-shot, "
        "is paired with every replicate of the other method on that dataset. The seeds choose only the few-shot "
        "split and the training, which it does not use, so its one score stands for every replicate. A method that "
        "trains and has one seed is paired on its replicate only.",
        "95% CI: BCa bootstrap of the mean difference over the pairs (scipy.stats.bootstrap, 9999 resamples, fixed "
        "seed). With few pairs it is narrower than the real uncertainty, since it never reaches beyond the smallest "
        "and largest difference.",
        "Wilcoxon p: two-sided signed-rank test of the differences (scipy.stats.wilcoxon, zero differences discarded). "
        "It is not shown below 6 non-zero differences, where even differences all of one sign give p above 0.05 "
        "(5: 0.0625). Holm p: Holm's step-down adjustment over the methods of the group that have a p, which bounds "
        "the chance of any false rejection in the group at α.",
        "Pairs on one dataset share that dataset, so they are not fully independent. Where a method's advantage "
        "depends on the dataset, the paired test overstates the evidence. The ranks treat datasets as the units.",
        "Average rank (Demšar 2006, JMLR 7:1-30): each method's mean over replicates is ranked on every dataset that "
        "all methods of the group have (1 best, ties averaged), and the ranks are averaged. Friedman's test "
        f"(scipy.stats.friedmanchisquare, tie-corrected) needs at least {MIN_METHODS} methods and {MIN_DATASETS} "
        "datasets. Its p comes from the χ² approximation, which Demšar deems adequate for N > 10 and k > 5, and "
        "it is not shown where even identical rankings on every dataset could not give p ≤ 0.05.",
        "Nemenyi critical difference CD = q_0.05 √(k(k+1)/(6N)): two methods differ when their average ranks differ "
        "by at least CD. It is a post-hoc test, to be read only where Friedman rejects. "
        "figures/critical_difference.png draws it.",
        f"{MISSING}: not computed; the note says why. comparisons.csv holds the same numbers unrounded.",
    ]
    return "\n".join(f"- {note}" for note in notes)
