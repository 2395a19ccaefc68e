"""Command line of the benchmark (``python run_bench.py``).

Today it lists the catalog and checks that the data of a selection is present and valid; the
sweep over methods, datasets, shots and seeds plugs in here as models and methods register.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from bench.catalog import SPLITS, Catalog, load_split_annotations, require_data
from bench.errors import BenchError
from bench.models import MODELS
from bench.tuning.base import METHODS


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py",
        description=(
            "Benchmark parameter-efficient tuning of fusion-based vision-language detectors "
            "(GLIP, Grounding DINO) on COCO, LVIS, ODinW13 and the synthetic shapes world."
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the known models, methods, suites and datasets, then exit")
    parser.add_argument("--suite", help="a suite from the catalog, e.g. odinw13 (see --list)")
    parser.add_argument("--datasets", type=_csv, default=[], help="comma-separated dataset names (added to --suite)")
    parser.add_argument("--data-root", type=Path, help="folder holding the real datasets (see datasets/README.md)")
    parser.add_argument("--cache-dir", type=Path, help="where synthetic datasets are generated (default: ~/.cache/vl-peft-bench)")
    parser.add_argument("--catalog", type=Path, help="catalog folder with *.yaml files (default: the repository's datasets/)")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="check that every split of the selected datasets is present and valid (generating synthetic ones)",
    )
    return parser


def print_catalog(catalog: Catalog) -> None:
    import methods  # noqa: F401  (registers every method)

    print("Models:")
    for entry in MODELS:
        print(f"  {entry.name:<22} {entry.description}")
    print("Methods:")
    for entry in METHODS:
        print(f"  {entry.name:<22} {entry.description}")
    print("Suites:")
    for entry in catalog.suites:
        suite = entry.obj
        print(f"  {suite.name:<22} v{suite.version}  {len(suite.datasets):>2} datasets, {suite.aggregation}  {suite.description}")
    print("Datasets:")
    for entry in catalog.datasets:
        spec = entry.obj
        kind = "synthetic" if spec.is_synthetic else "on disk"
        print(f"  {spec.name:<22} v{spec.version}  {spec.evaluator:<5} {kind:<9}  {spec.description}")


def check_data(catalog: Catalog, args: argparse.Namespace) -> None:
    specs = catalog.resolve(args.suite, args.datasets)
    require_data(specs, args.data_root, cache_root=args.cache_dir)
    for spec in specs:
        for split in SPLITS:
            if split not in spec.splits:
                continue
            annotations = load_split_annotations(spec, split, args.data_root, args.cache_dir)
            print(
                f"{spec.name:<22} {split:<5} {len(annotations.images):>7} images "
                f"{len(annotations.data['annotations']):>8} boxes {annotations.num_classes:>5} classes"
            )
    print(f"All {len(specs)} dataset(s) are present and valid.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        catalog = Catalog.load(args.catalog) if args.catalog else Catalog.load()
        if args.list:
            print_catalog(catalog)
        elif args.check_data:
            check_data(catalog, args)
        else:
            parser.print_help()
            print("\nChoose --list or --check-data; training sweeps need a model and methods, which are not registered yet.")
            return 2
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
