"""Paired comparisons of each method against one reference method, within each (model, shots) group.

A pair is a (dataset, seed replicate) cell that both methods scored. Both runs trained on the same
few-shot split with the same seed, so how hard that split happens to be cancels in their difference.
This makes the test far more sensitive than comparing the two methods' means. Per method the report
gives the number of pairs, the mean difference (method − reference, in AP points), a bootstrap 95%
interval of that mean, Wilcoxon's signed-rank p and Holm's adjustment of it over the methods of the
group. These follow Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data Sets",
JMLR 7:1-30, section 3.1.3, which recommends the signed-rank test over the paired t-test because it
does not assume normal differences and outliers weigh less.

**Broadcast.** A method that trained nothing (0 training steps in every run) and has one replicate
per dataset is paired on dataset alone. Its single score is paired with every replicate of the
other method on that dataset, whatever their seeds. The typical case is ``zero-shot``, which is
deterministic and so runs once per dataset. This is valid because the seeds choose only the
few-shot split and the training, and a method that trains nothing uses neither. Its one score is
therefore the score every replicate would have had, and each difference is the other method's
replicate minus a constant. The differences are then as independent as those replicates are.

A method that trains and happens to have one seed is not broadcast, but matched on its replicate.
Broadcasting it would count one random draw once per pair, and the test would take that for
evidence. The tables name every broadcast method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import BenchError
from bench.report.frame import REPLICATE
from bench.report.leaderboard import Leaderboard, suite_columns

ALPHA = 0.05
BOOTSTRAP_SEED = 0  # a fixed generator: the same records always give the same interval
POINTS = 100.0  # differences in AP points: stored scores are fractions
TIE_DECIMALS = 9  # differences equal up to float rounding (0.46 - 0.44 vs 0.42 - 0.40) are ties
COLUMNS = [
    "method", "pairs", "broadcast", "mean_difference", "ci95_low", "ci95_high", "wilcoxon_p", "holm_p", "note",
]


@dataclass(frozen=True)
class PairedDifference:
    """Statistics of one method's differences to the reference, in AP points.

    A value that cannot be computed, or that could not mean anything at this number of pairs, is NaN.
    ``note`` then says why, so that a missing p is never mistaken for a non-significant one.
    """

    pairs: int
    mean: float
    ci95_low: float
    ci95_high: float
    wilcoxon_p: float
    note: str


@dataclass(frozen=True)
class GroupComparison:
    """The comparisons of one (model, shots) group.

    ``reference`` is the method compared against, or None when there is none. ``chosen`` says how the
    reference was chosen, and ``note`` why the table is empty when it is. ``table`` has one row per
    other method in leaderboard order (:data:`COLUMNS`). ``broadcast`` names the method paired once
    per dataset, if any. Differences are in AP points.
    """

    model: str
    shots: str
    reference: str | None
    chosen: str
    note: str
    table: pd.DataFrame


def compare_to_reference(
    frame: pd.DataFrame, board: Leaderboard, reference: str | None = None
) -> list[GroupComparison]:
    """Compare every method of each (model, shots) group in ``board`` with ``reference``.

    With ``reference=None``, each group's reference is its best row, meaning the highest mean of the
    primary suite, which is the first row of that group in the leaderboard. A reference that names no
    row of the report is refused with a list of the methods the report has.
    """
    methods = sorted(set(board.table["method"]))
    if reference is not None and reference not in methods:
        raise BenchError(
            f"Reference method {reference!r} has no finished run in this report; it has {', '.join(methods)}."
        )
    scored = frame[frame["score"].notna()]
    return [
        _compare_group(scored[(scored["model"] == model) & (scored["shots"] == shots)], rows, board, reference)
        for (model, shots), rows in board.table.groupby(["model", "shots"], sort=False)
    ]


def paired_differences(group: pd.DataFrame, method: str, reference: str) -> tuple[np.ndarray, str | None]:
    """The differences ``method − reference`` in AP points, one per pair, and the method broadcast (if any).

    ``group`` holds the scored runs of one (model, shots) group. Pairs match on dataset and
    replicate. If either method is seed-independent (see the module docstring), they match on
    dataset alone.
    """
    ours, theirs = group[group["method"] == method], group[group["method"] == reference]
    ours_fixed, theirs_fixed = seed_independent(ours), seed_independent(theirs)
    keys = ["dataset"] if ours_fixed or theirs_fixed else ["dataset", *REPLICATE]
    broadcast = method if ours_fixed and not theirs_fixed else reference if theirs_fixed and not ours_fixed else None
    pairs = ours[[*keys, "score"]].merge(theirs[[*keys, "score"]], on=keys, suffixes=("", "_reference"))
    differences = POINTS * (pairs["score"].to_numpy(float) - pairs["score_reference"].to_numpy(float))
    return np.round(differences, TIE_DECIMALS), broadcast


def paired_difference(differences: Sequence[float], alpha: float = ALPHA) -> PairedDifference:
    """Mean, bootstrap 95% interval and Wilcoxon signed-rank p of paired differences.

    The interval is ``scipy.stats.bootstrap`` of the mean (BCa, seeded). Resampling the differences
    is resampling the pairs. Wilcoxon's test discards zero differences (``zero_method="wilcox"``).
    With m non-zero differences its smallest two-sided p is 2^(1−m), reached when all of them have
    the same sign. Below 6 that p exceeds 0.05 (m = 5: 0.0625), so no p is shown and the note says
    why. The same holds when all differences are zero.
    """
    data = np.asarray(differences, dtype=float)
    n = len(data)
    if n == 0:
        note = "no pairs: no dataset and replicate scored for both"
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, note)
    low, high, interval_note = _bootstrap_interval(data)
    p, test_note = _wilcoxon(data, alpha)
    note = "; ".join(part for part in (interval_note, test_note) if part)
    return PairedDifference(n, float(data.mean()), low, high, p, note)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70). NaN entries are not tests.

    Sorted ascending, the i-th smallest of m p-values becomes ``max over j ≤ i of min(1, (m − j + 1) p_(j))``.
    Rejecting the adjusted p ≤ α controls the family-wise error over the m tests, as Bonferroni does,
    but is uniformly more powerful. SciPy has only Benjamini-Hochberg (``false_discovery_control``),
    which controls the false discovery rate instead.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for i, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - i) * p[index]))
        adjusted[index] = running
    return adjusted


def seed_independent(runs: pd.DataFrame) -> bool:
    """Whether one method's scored ``runs`` trained nothing and hold one replicate per dataset."""
    return not runs.empty and bool((runs["train_steps"] == 0).all() and (runs.groupby("dataset").size() == 1).all())


def smallest_wilcoxon_p(nonzero: int) -> float:
    """The smallest two-sided p that Wilcoxon's signed-rank test can give with ``nonzero`` non-zero differences.

    Under the null hypothesis all 2^m sign patterns are equally likely. The two patterns with every
    sign the same are the most extreme ones, which gives p = 2 / 2^m.
    """
    return 2.0 ** (1 - nonzero)


def _compare_group(
    group: pd.DataFrame, rows: pd.DataFrame, board: Leaderboard, reference: str | None
) -> GroupComparison:
    model, shots = rows["model"].iloc[0], rows["shots"].iloc[0]
    empty = pd.DataFrame(columns=COLUMNS)
    chosen = "given"
    if reference is None:
        suite = board.primary.name
        ranked = rows[rows[suite_columns(suite, board.metric).mean].notna()]
        if ranked.empty:
            note = f"no row has a complete {suite} replicate, so there is no best row; name a reference method"
            return GroupComparison(model, shots, None, "", note, empty)
        reference, chosen = ranked["method"].iloc[0], f"the best {suite} suite {board.metric} of the group"
    if reference not in set(rows["method"]):
        return GroupComparison(model, shots, reference, chosen, f"{reference} has no run here", empty)
    others = [_row(group, method, reference) for method in rows["method"] if method != reference]
    table = pd.DataFrame(others, columns=COLUMNS)
    table["holm_p"] = holm(table["wilcoxon_p"].to_numpy(float))
    return GroupComparison(model, shots, reference, chosen, "", table)


def _row(group: pd.DataFrame, method: str, reference: str) -> dict[str, object]:
    differences, broadcast = paired_differences(group, method, reference)
    result = paired_difference(differences)
    return {
        "method": method, "pairs": result.pairs, "broadcast": broadcast or "", "mean_difference": result.mean,
        "ci95_low": result.ci95_low, "ci95_high": result.ci95_high, "wilcoxon_p": result.wilcoxon_p,
        "note": result.note,
    }


def _bootstrap_interval(data: np.ndarray) -> tuple[float, float, str]:
    if len(data) < 2:
        return math.nan, math.nan, "one pair: no interval"
    if np.ptp(data) == 0:
        return math.nan, math.nan, "all differences are equal: a bootstrap has no spread to show"
    result = stats.bootstrap((data,), np.mean, method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), ""


def _wilcoxon(data: np.ndarray, alpha: float) -> tuple[float, str]:
    nonzero = int(np.count_nonzero(data))
    if nonzero == 0:
        return math.nan, "all differences are zero: no test"
    if smallest_wilcoxon_p(nonzero) > alpha:
        needed = math.ceil(1 - math.log2(alpha))
        return math.nan, (
            f"too few pairs for a test: {nonzero} non-zero difference{'' if nonzero == 1 else 's'}, whose smallest "
            f"two-sided p is {smallest_wilcoxon_p(nonzero):.3g} (p ≤ {alpha:g} needs {needed})"
        )
    return float(stats.wilcoxon(data).pvalue), ""
