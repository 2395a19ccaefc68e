"""Parameter accounting of every registered method on full-size models, without allocating them.

    python -m bench.tuning.accounting_table [--models glip-t,glip-l,grounding-dino-t] [--methods sdpt,lora] [--format markdown|csv]

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights, no tokenizer),
each method is applied with its default configuration, and the table lists allocated, effective and
head parameters, stored bytes and the percentage of the base model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import pandas as pd
import torch
from torch import nn

from bench.errors import BenchError
from bench.models import MODELS
from bench.models.base import DetectorBase
from bench.models.glip.config import GLIP_L, GLIP_T
from bench.models.glip.model import GLIP
from bench.models.grounding_dino.config import grounding_dino_config
from bench.models.grounding_dino.model import grounding_dino_on_config
from bench.tuning.accounting import account
from bench.tuning.base import METHODS, Method, build_method

# Full-size models by name, built from their architecture alone (run under the meta device).
META_BUILDERS: dict[str, Callable[[], DetectorBase]] = {
    "glip-t": lambda: GLIP(GLIP_T),
    "glip-l": lambda: GLIP(GLIP_L),
    "grounding-dino-t": lambda: grounding_dino_on_config(grounding_dino_config("t", "grounding-dino")),
    "grounding-dino-b": lambda: grounding_dino_on_config(grounding_dino_config("b", "grounding-dino")),
}
DEFAULT_MODELS = "glip-t,glip-l,grounding-dino-t"


def accounting_table(model_names: list[str], method_names: list[str] | None = None) -> pd.DataFrame:
    """One row per (model, method), every registered method when ``method_names`` is None."""
    rows = []
    for model_name in model_names:
        MODELS.entry(model_name)  # unknown names: the registry's error
        if model_name not in META_BUILDERS:
            raise BenchError(f"No full-size architecture to account for {model_name!r}; choose from {', '.join(META_BUILDERS)}.")
        for method_name in method_names or METHODS.names():
            model, method, trainable = _applied(model_name, method_name)
            rows.append({"model": model_name, **account(model, method, trainable).to_dict()})
    return pd.DataFrame(rows)


def _applied(model_name: str, method_name: str) -> tuple[DetectorBase, Method, dict[str, nn.Parameter]]:
    """The model with the method applied, on the meta device; for a method whose install runs an
    operator with no meta kernel (peft's BOFT reads a tensor's value, Uni-LoRA calls bincount), built
    on the CPU instead (seconds and about 1 GB for GLIP-T; ``to_empty`` would be cheaper but unties
    the parameters Grounding DINO shares between its decoder and head, which would then count twice)."""
    try:
        with torch.device("meta"):
            model = META_BUILDERS[model_name]()
            method = build_method(method_name)
            return model, method, method.apply(model)
    except (NotImplementedError, RuntimeError) as error:
        if "meta" not in str(error).lower():
            raise
    model, method = META_BUILDERS[model_name](), build_method(method_name)
    return model, method, method.apply(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning.accounting_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: every registered method)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    methods_wanted = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    table = accounting_table([m.strip() for m in args.models.split(",") if m.strip()], methods_wanted)
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
