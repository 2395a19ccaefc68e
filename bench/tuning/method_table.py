"""The README's table of every registered method: family, what it trains, where its defaults come
from, and its parameters on one full-size model.

    python -m bench.tuning.method_table [--model glip-t] [--format markdown|csv]

A reader choosing between methods wants them side by side before any run: what kind of thing each
trains (its family, :data:`bench.tuning.base.FAMILIES`), how much of it (allocated and effective
parameters with the default configuration, counted on the ``meta`` device as in
:mod:`bench.tuning.accounting_table`), and whether its defaults are a paper's, official code's or
ours (the ``sources`` every config declares; ``--list --verbose`` prints them in full).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import pandas as pd

from bench.tuning.accounting_table import META_BUILDERS, accounting_table
from bench.tuning.base import FAMILIES, METHODS, MethodConfig


def source_kind(source: str) -> str:
    """``paper``, ``official code`` or ``ours``: the part of a declared source before its colon."""
    return source.split(":", 1)[0].strip()


def defaults_summary(config_class: type[MethodConfig]) -> str:
    """The lr default and its source's kind, then how many other options come from each kind:
    ``lr 0.001 (ours); 5 options: 4 official code, 1 ours``."""
    sources = dict(config_class.sources)
    lr = getattr(config_class(), "lr", None)
    parts = []
    if lr is not None and "lr" in sources:
        parts.append(f"lr {lr:g} ({source_kind(sources.pop('lr'))})")
    others = Counter(source_kind(source) for source in sources.values())
    if others:
        counted = ", ".join(f"{count} {kind}" for kind, count in sorted(others.items(), key=lambda item: (-item[1], item[0])))
        total = sum(others.values())
        parts.append(f"{total} option{'s' if total > 1 else ''}: {counted}")
    return "; ".join(parts) or "no options"


def method_table(model_name: str = "glip-t") -> pd.DataFrame:
    """One row per registered method (presets are configs of these, compositions made on demand are
    sums of their parts, so neither has a row), ordered by family as in :data:`FAMILIES`."""
    entries = sorted(METHODS.declared(), key=lambda entry: (list(FAMILIES).index(entry.obj.family), entry.name))
    counts = accounting_table([model_name], [entry.name for entry in entries]).set_index("method")
    return pd.DataFrame([{
        "method": entry.name,
        "family": entry.obj.family,
        "what trains": entry.description,
        "defaults": defaults_summary(entry.obj.config_class) if entry.obj.trains else "nothing to set",
        f"allocated ({model_name})": int(counts.at[entry.name, "allocated"]),
        f"effective ({model_name})": int(counts.at[entry.name, "effective"]),
    } for entry in entries])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning.method_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="glip-t", choices=sorted(META_BUILDERS))
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    table = method_table(args.model)
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    else:
        print(table.to_markdown(index=False, intfmt=","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
