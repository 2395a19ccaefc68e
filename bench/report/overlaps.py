"""Which (model, dataset) pairs of a report are known to overlap, and the suites a report derives.

A detector pre-trained on a corpus that shares images with an evaluation set (or contains it) has
seen part of the test: its zero-shot score there is not zero-shot, and its gains from tuning are
smaller than elsewhere. The catalog declares both sides, so each claim carries its source: a model
entry lists its pre-training corpora (``pretraining``), a dataset entry the corpora it is known to
overlap (``overlaps: {corpus: source}``). A pair is flagged when they share a corpus.

A suite with flagged members is scored twice, as declared and without them; a suite whose members
declare domains (RF100-VL) is also scored per domain. Both are derived :class:`SuiteSpec` values,
so the leaderboard, its intervals and the figures treat them like any other suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from bench.catalog import Catalog, SuiteSpec

WITHOUT_OVERLAPS = "without overlaps"


@dataclass(frozen=True)
class Overlap:
    """``model`` was pre-trained on ``corpus``, which ``dataset`` is known to overlap (``claim``: the
    dataset entry's source; ``pretraining_source``: where the model's corpora are stated)."""

    model: str
    dataset: str
    corpus: str
    claim: str
    pretraining_source: str


def find_overlaps(catalog: Catalog, models: Iterable[str], datasets: Iterable[str]) -> tuple[Overlap, ...]:
    """Every flagged pair among ``models`` (registered names; those without a catalog entry have no
    declared corpora) and ``datasets``, sorted by model, dataset and corpus."""
    found = []
    datasets = sorted(set(datasets))
    for model in sorted(set(models)):
        if model not in catalog.models:
            continue
        facts = catalog.models.get(model)
        for name in datasets:
            declared = catalog.dataset(name).overlaps
            found.extend(Overlap(model, name, corpus, declared[corpus], facts.pretraining_source)
                         for corpus in facts.pretraining if corpus in declared)
    return tuple(found)


def derived_suites(catalog: Catalog, suites: Sequence[SuiteSpec], overlaps: Sequence[Overlap]) -> list[SuiteSpec]:
    """``suites`` each followed by its version without flagged members (when it has some and keeps
    any) and by one suite per domain of its members (when they declare domains)."""
    flagged = {overlap.dataset for overlap in overlaps}
    result = []
    for suite in suites:
        result.append(suite)
        clean = tuple(name for name in suite.datasets if name not in flagged)
        if clean and len(clean) < len(suite.datasets):
            result.append(SuiteSpec(f"{suite.name} {WITHOUT_OVERLAPS}", clean, suite.version,
                                    f"{suite.name} less its members flagged as overlapping a model's pre-training data "
                                    f"({', '.join(sorted(flagged.intersection(suite.datasets)))})", suite.aggregation))
        result.extend(domain_suites(catalog, suite))
    return result


def domain_suites(catalog: Catalog, suite: SuiteSpec) -> list[SuiteSpec]:
    """One suite per domain the members of ``suite`` declare (none when fewer than two domains), named
    ``<suite>/<domain>``, its members in suite order."""
    domains: dict[str, list[str]] = {}
    for name in suite.datasets:
        domain = catalog.dataset(name).domain
        if domain is not None:
            domains.setdefault(domain, []).append(name)
    if len(domains) < 2:
        return []
    return [SuiteSpec(f"{suite.name}/{domain}", tuple(members), suite.version,
                      f"the {domain} domain of {suite.name}", suite.aggregation)
            for domain, members in sorted(domains.items())]
