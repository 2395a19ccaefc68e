"""Parameter accounting of every registered method on full-size models, without allocating them.

    python -m bench.tuning.accounting_table [--models glip-t,glip-l] [--format markdown|csv]

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights, no tokenizer),
each method is applied with its default configuration, and the table lists allocated, effective and
head parameters, stored bytes and the percentage of the base model.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

import methods  # noqa: F401  (registers every method)
from bench.models import MODELS
from bench.models.glip.config import GLIP_L, GLIP_T
from bench.models.glip.model import GLIP
from bench.tuning.accounting import account
from bench.tuning.base import METHODS, build_method

META_CONFIGS = {"glip-t": GLIP_T, "glip-l": GLIP_L}


def accounting_table(model_names: list[str]) -> pd.DataFrame:
    rows = []
    for model_name in model_names:
        MODELS.entry(model_name)  # unknown names: the registry's error
        for entry in METHODS:
            with torch.device("meta"):
                model = GLIP(META_CONFIGS[model_name])
                method = build_method(entry.name)
                trainable = method.apply(model)
            rows.append({"model": model_name, **account(model, method, trainable).to_dict()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning.accounting_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="glip-t,glip-l")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    table = accounting_table([m.strip() for m in args.models.split(",") if m.strip()])
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    else:
        shown = table.assign(
            percent_of_base=table.percent_of_base.map(lambda x: f"{x:.4f}"),
            stored_MB=(table.stored_bytes / 1e6).map(lambda x: f"{x:.2f}"),
        ).drop(columns=["stored_bytes"])
        print(shown.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
