"""``python -m bench.pretrain``: pre-train glip-nano on the shapes corpus and write its model card.

    python -m bench.pretrain --out bench/models/glip/nano

writes ``glip-nano.safetensors``, ``pretraining.json`` and ``MODEL_CARD.md`` into ``--out``. The
weights committed with the project were made by this command with its defaults. ``--rescore``
measures the weights already in ``--out`` again (after a change to the evaluation or the downstream
suite) and rewrites the record's scores and the card, keeping how the weights were made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from bench.catalog import Catalog
from bench.errors import BenchError
from bench.models import MODELS
from bench.models.glip.model import NANO_WEIGHTS
from bench.models.base import DetectorBase
from bench.pretrain.card import RECORD_FILE, split_ap, write_card
from bench.pretrain.corpus import CORPUS_SUITE, DOWNSTREAM_SUITE, open_corpus
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.runs.fingerprint import file_sha256

MODEL = "glip-nano"


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=NANO_WEIGHTS.parent, help=f"output folder (default: {NANO_WEIGHTS.parent})")
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name), help=f"default: {getattr(defaults, field.name)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all)")
    parser.add_argument("--cache-dir", type=Path, help="where the corpus is generated (default: ~/.cache/vl-peft-bench)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rescore", action="store_true",
                        help="do not train: score the weights in --out again and rewrite its record and card")
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    torch.set_num_threads(args.threads)
    catalog = Catalog.load()
    torch.manual_seed(config.seed)
    model = MODELS.get(MODEL)(weights=None)
    parts = open_corpus(catalog, model.tokenizer, model.text_slots, args.cache_dir)
    tick = time.perf_counter()
    log = pretrain(model, parts, config, progress=not args.no_progress)
    seconds = time.perf_counter() - tick
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / NANO_WEIGHTS.name
    partial = weights.with_suffix(".partial")
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(partial))
    os.replace(partial, weights)
    record = {
        "model": MODEL,
        "command": " ".join(["python -m bench.pretrain", *map(shlex.quote, argv)]),
        "config": dataclasses.asdict(config),
        "corpus": CORPUS_SUITE,
        "downstream": DOWNSTREAM_SUITE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "weights_sha256": file_sha256(weights),
        "loss_log": log,
    }
    return write_card(args.out, {**record, **scores(model, catalog, args.cache_dir)})


def scores(model: DetectorBase, catalog: Catalog, cache_dir: Path | None) -> dict[str, dict[str, float]]:
    print("Scoring the pre-trained model on held-out corpus images and on the downstream suite...", flush=True)
    return {"corpus_test_ap": split_ap(model, catalog.resolve(CORPUS_SUITE, []), cache_dir),
            "zero_shot_test_ap": split_ap(model, catalog.resolve(DOWNSTREAM_SUITE, []), cache_dir)}


def rescore(args: argparse.Namespace) -> Path:
    weights = args.out / NANO_WEIGHTS.name
    try:
        record = json.loads((args.out / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchError(f"--rescore needs the record of an earlier run in {args.out} ({err}); run without --rescore to make one.") from None
    if not weights.is_file() or file_sha256(weights) != record["weights_sha256"]:
        raise BenchError(f"{weights} is missing or is not the file {args.out / RECORD_FILE} describes; pre-train again.")
    torch.set_num_threads(args.threads)
    model = MODELS.get(MODEL)(weights=weights)
    return write_card(args.out, {**record, **scores(model, Catalog.load(), args.cache_dir)})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        card = rescore(args) if args.rescore else run(args, argv)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(card.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
