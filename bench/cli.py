"""Command line of the benchmark (``python run_bench.py``).

``run_bench.py --methods sdpt,vpt,lora --suite odinw13 --model glip-t --weights W`` expands into
every (method x dataset x shots x seed) cell, skips the cells with a stored result, runs the others
here (``--executor local``) or as one SLURM job array (``--executor slurm``), and writes the
leaderboard of the sweep under ``--results``. ``run_bench.py report`` rebuilds the leaderboards
from every stored result. ``--list`` shows what is registered, ``--check-data`` validates data,
``--dry-run`` prints the cells and which are done. With no arguments at all it runs the default
benchmark, :func:`default_arguments`: pre-trained glip-nano tuned by the main methods on the
synthetic ``shapes-odinw`` suite, minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.catalog import Catalog, DatasetSpec, SuiteSpec
from bench.catalog_check import LEVELS, check_datasets
from bench.data.holdout import DECLARED, HELD_OUT_FRACTION, HELD_OUT_SEED
from bench.errors import BenchError
from bench.launch import EXECUTORS
from bench.launch.base import SweepOutcome, cell_label
from bench.models import MODELS
from bench.options import key_value_argument
from bench.runs.estimate import PlannedTrainingImages, StepProfile, estimate_sweep, plan_summary
from bench.runs.lease import Owner
from bench.runs.plan import Cell, RunContext, SweepRequest, missing_cells, plan_cells, prepare, running_cells
from bench.runs.record import RunRecord, RunSpec
from bench.runs.sweep_log import SweepLog
from bench.runs.tuning import SCOPES, TuneRequest, final_cells, select_settings, trial_cells, untuned_cells, validation_scores
from bench.sweep_file import OPTION, SweepFile, load_sweep_file, split_config_option
from bench.train.frozen_cache import FROZEN_CACHE_MODES
from bench.train.protocol import PROTOCOLS
from bench.train.tracking import OFF, check_tracker, tracker_choices
from bench.tuning.listing import describe_methods
from bench.tuning.search import parse_tuned_fields

# The default benchmark's methods: one of each family (none, head only, text prompts, image prompts,
# coupled prompts, fusion-space prototypes, low-rank updates, everything).
DEFAULT_METHODS = ("zero-shot", "linear-probe", "glip-prompt", "coop", "vpt", "maple", "sdpt", "lora", "full")
MAX_DEFAULT_JOBS = 8
DEFAULT_SUITE = "shapes-odinw-mini"
DEFAULT_SHOTS = "5,full"
LISTED_SUITE_SIZE = 20  # --list names the members of suites up to this size; larger ones are counted
REFERENCE_HELP = ("the method every other one is compared with in the report's paired tests "
                  "(default: the best row of each model and shots)")


def default_arguments() -> list[str]:
    """What ``python run_bench.py`` without arguments runs: every default method on shapes-odinw-mini
    with glip-nano's packaged weights under the ``shapes`` protocol, 5-shot and full data (so a claim
    of robustness in few-shot is visible in the small world too), its lr tuned on validation with the
    same 3 trials for every method, 3 seed replicates (each 5-shot replicate draws its own split), the
    tuned model also scored on held-out images of glip-nano's pre-training world (retention), one
    single-threaded cell per CPU core."""
    jobs = max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS))
    return ["--model", "glip-nano", "--suite", DEFAULT_SUITE, "--methods", ",".join(DEFAULT_METHODS),
            "--shots", DEFAULT_SHOTS, "--protocol", "shapes", "--protocol-set", "retention=true",
            "--seeds", "0,1,2", "--tune", "lr", "--tune-trials", "3", "--jobs", str(jobs)]


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _shots(value: str) -> list[int | None]:
    if not _csv(value):
        raise argparse.ArgumentTypeError("shots must be positive integers or 'full', got an empty list")
    out: list[int | None] = []
    for item in _csv(value):
        if item == "full":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"shots must be positive integers or 'full', got {item!r}")
    return out


def _ints(value: str) -> list[int]:
    if not _csv(value):
        raise argparse.ArgumentTypeError("expected comma-separated integers, got an empty list")
    try:
        return [int(item) for item in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _split_seeds(value: str) -> list[int | None]:
    items = _csv(value)
    if not items:
        raise argparse.ArgumentTypeError("split seeds are integers or 'glip', got an empty list")
    if not all(item == "glip" or item.lstrip("-").isdigit() for item in items):
        raise argparse.ArgumentTypeError(f"split seeds are integers or 'glip', got {value!r}")
    return [None if item == "glip" else int(item) for item in items]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py",
        description=(
            "Benchmark parameter-efficient tuning of fusion-based vision-language detectors "
            "(GLIP, Grounding DINO) on COCO, LVIS, ODinW13 and the synthetic shapes world. "
            "`run_bench.py report` rebuilds the leaderboards from stored results."
        ),
    )
    parser.add_argument(OPTION, metavar="FILE", help="a sweep file (YAML) whose keys are these options, e.g. "
                        "sweeps/odinw13.yaml; flags given here override its values (README: \"Sweep files\")")
    what = parser.add_argument_group("what to run")
    what.add_argument("--methods", type=_csv, default=[], help="comma-separated tuning methods (see --list)")
    what.add_argument("--method-set", type=key_value_argument, action="append", default=[], metavar="METHOD.KEY=VALUE",
                      help="a method option, e.g. sdpt.num_tokens=8 (repeatable; values are JSON)")
    what.add_argument("--suite", help="a suite from the catalog, e.g. odinw13 (see --list)")
    what.add_argument("--datasets", type=_csv, default=[], help="comma-separated dataset names (added to --suite)")
    what.add_argument("--model", default="glip-nano", help="detector (see --list; default: glip-nano)")
    what.add_argument("--weights", help="checkpoint file of the model (GLIP: e.g. glip_tiny_model_o365_goldg.pth) "
                      "or its from_pretrained folder (Grounding DINO)")
    what.add_argument("--tokenizer", metavar="DIR",
                      help="GLIP: the bert-base-uncased tokenizer folder, when it is not in the Hugging Face cache "
                           "(Grounding DINO reads its own from the --weights folder)")
    what.add_argument("--allow-unsafe-checkpoint", action="store_true",
                      help="read a legacy pickled checkpoint that holds Python objects beyond tensors; off by default "
                           "because reading such a file can run any code in it: use only for files you trust")
    what.add_argument("--random-init", action="store_true",
                      help="run a randomly initialised model (no --weights), for speed and memory studies; "
                           "every record and leaderboard row says so")
    what.add_argument("--shots", type=_shots, default=[None], help="comma-separated shots per class, or 'full' (default: full)")
    what.add_argument("--seeds", type=_ints, default=[0], help="training seeds (default: 0)")
    what.add_argument("--split-seeds", type=_split_seeds, default=None,
                      help="few-shot split seeds, crossed with --seeds ('glip' = GLIP's deterministic split); "
                           "default: each training seed also draws its own split")
    what.add_argument("--tune", type=parse_tuned_fields, metavar="FIELDS",
                      help="select these hyper-parameters per method on the validation split, with the same number of "
                           "trials for every method, before scoring test: lr or lr,weight_decay (see README)")
    what.add_argument("--tune-trials", type=int, default=3, metavar="N",
                      help="trials per method (and dataset, or suite) with --tune (default: 3; lr: default/10, default, default*10)")
    what.add_argument("--tune-scope", choices=SCOPES, default="dataset",
                      help="with --tune, one selection per dataset (default) or one per suite (best mean validation AP)")
    what.add_argument("--protocol", default="glip-odinw", help="training protocol (see --list; default: glip-odinw)")
    what.add_argument("--protocol-set", type=key_value_argument, action="append", default=[], metavar="KEY=VALUE",
                      help="change a protocol field, e.g. epochs=12 or max_steps=500 (repeatable)")
    what.add_argument("--reference", help=REFERENCE_HELP)
    where = parser.add_argument_group("data and results")
    where.add_argument("--data-root", type=Path, help="folder holding the real datasets (see datasets/README.md)")
    where.add_argument("--cache-dir", type=Path, help="where synthetic datasets are generated (default: ~/.cache/vl-peft-bench)")
    where.add_argument("--catalog", type=Path, help="a folder of your own dataset and suite *.yaml files, added to the repository's datasets/ "
                            "(README: \"Your own COCO-format dataset\")")
    where.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results/)")
    how = parser.add_argument_group("how to run")
    how.add_argument("--executor", choices=EXECUTORS.names(), default="local",
                     help="where cells run (see --list; default: local, this machine)")
    how.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    how.add_argument("--workers", type=int, default=0, help="data-loader worker processes per run (default: 0)")
    how.add_argument("--frozen-cache", choices=FROZEN_CACHE_MODES, default="disk",
                     help="remember the outputs of frozen detector parts (image backbone, text encoder) by the content "
                          "of their inputs: off, memory (per process) or disk (shared by the cells, below "
                          "RESULTS/runs/cache/frozen); results are bit-identical either way (default: disk)")
    how.add_argument("--frozen-cache-gib", type=float, default=8.0, metavar="GIB",
                     help="disk space the frozen-part cache may use; the oldest entries are pruned (default: 8)")
    how.add_argument("--dry-run", action="store_true", help="print the cells and which are done; run nothing")
    how.add_argument("--force", action="store_true", help="run cells again even when a result is stored")
    how.add_argument("--cost-model", type=Path, metavar="FILE",
                     help="with --dry-run: price cells that no finished cell prices from this step-time profile "
                          "(written by python -m bench.profile --out FILE)")
    how.add_argument("--no-progress", action="store_true", help="no progress bars")
    how.add_argument("--log", choices=tracker_choices(), default=OFF,
                     help="track each trained cell's loss, learning rate and validation metrics: tensorboard (event "
                          "files in RESULTS/logs/tensorboard/<run key>/) or wandb (offline runs in RESULTS/logs/wandb/, "
                          "wandb sync uploads them); neither package is a dependency: pip install "
                          "'vl-peft-bench[tensorboard]' or '[wandb]' (default: off)")
    for entry in EXECUTORS:  # each executor's own options
        entry.obj.add_arguments(parser)
    inspect = parser.add_argument_group("inspect")
    inspect.add_argument("--list", action="store_true", help="list models, methods, protocols, suites and datasets, then exit")
    inspect.add_argument("--verbose", action="store_true", help="with --list: every method option with its default and its source")
    inspect.add_argument("--check-data", nargs="?", const="header", choices=LEVELS, metavar="full",
                         help="check every split of the selected datasets: annotations, boxes, and every image's header, "
                              "size and end marker (sweeps run this themselves first); --check-data=full also decodes "
                              "every image")
    return parser


def build_report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_bench.py report", description="Rebuild leaderboards and figures from stored results.")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results/)")
    parser.add_argument("--suite", action="append", default=[], help="suite(s) to aggregate (default: every suite whose datasets have results)")
    parser.add_argument("--catalog", type=Path, help="a folder of your own dataset and suite *.yaml files, added to the repository's datasets/")
    parser.add_argument("--reference", help=REFERENCE_HELP)
    return parser


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py eval",
        description="Score a saved tuned state on its own: the base it was trained on, its method and config re-applied, "
                    "its tensors loaded, evaluated as its run was (README: \"Evaluate a tuned state\").")
    parser.add_argument("--tuned", type=Path, required=True, metavar="PATH",
                        help="a cell's selected weights, RESULTS/runs/work/<run key>/selected.safetensors")
    parser.add_argument("--dataset", help="dataset to score on (default: the one it was tuned on; see run_bench.py --list)")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--weights", help="the base weights it was trained on, when they have moved (checked by content)")
    parser.add_argument("--tokenizer", metavar="DIR", help="GLIP: the bert-base-uncased tokenizer folder")
    parser.add_argument("--allow-unsafe-checkpoint", action="store_true", help="read a legacy pickled checkpoint you trust")
    parser.add_argument("--data-root", type=Path, help="folder holding the real datasets (see datasets/README.md)")
    parser.add_argument("--cache-dir", type=Path, help="where synthetic datasets are generated")
    parser.add_argument("--catalog", type=Path, help="a folder of your own dataset and suite *.yaml files")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results folder whose fingerprint cache to use (default: results/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def print_catalog(catalog: Catalog, verbose: bool = False) -> None:
    """``--list``: what is registered; ``verbose`` adds every method option's default and its source, and
    every dataset of the large suites (RF100-VL's hundred), which are otherwise counted, not listed."""
    listed, summarised = listed_datasets(catalog, verbose)
    sections = [
        ("Models", [(e.name, e.description) for e in MODELS]),
        ("Protocols", [(e.name, e.description) for e in PROTOCOLS]),
        ("Executors", [(e.name, e.description) for e in EXECUTORS]),
        ("Suites", [(s.obj.name, f"v{s.obj.version} {len(s.obj.datasets):>3} datasets, {s.obj.aggregation}  {s.obj.description}")
                    for s in catalog.suites]),
        ("Datasets", [(d.name, f"v{d.version}  {d.evaluator:<5} {'synthetic' if d.is_synthetic else 'on disk':<9}  {d.description}")
                      for d in listed]),
    ]
    for title, rows in sections:
        print(f"{title}:")
        for name, description in rows:
            print(f"  {name:<22} {description}")
        if title == "Models":
            print(describe_methods(verbose))
    if summarised:
        counts = ", ".join(f"{suite} {count}" for suite, count in summarised.items())
        print(f"  ... and {sum(summarised.values())} datasets of large suites ({counts}); --list --verbose lists every one.")


def listed_datasets(catalog: Catalog, verbose: bool) -> tuple[list[DatasetSpec], dict[str, int]]:
    """The datasets ``--list`` prints, and per large suite how many of its members it leaves out: those
    whose every suite has more than :data:`LISTED_SUITE_SIZE` members (all of them when ``verbose``)."""
    suites_of: dict[str, list[SuiteSpec]] = {}
    for entry in catalog.suites:
        for name in entry.obj.datasets:
            suites_of.setdefault(name, []).append(entry.obj)
    listed, summarised = [], {}
    for entry in catalog.datasets:
        suites = suites_of.get(entry.name, [])
        if verbose or not suites or min(len(suite.datasets) for suite in suites) <= LISTED_SUITE_SIZE:
            listed.append(entry.obj)
        else:
            largest = max(suites, key=lambda suite: len(suite.datasets)).name
            summarised[largest] = summarised.get(largest, 0) + 1
    return listed, summarised


def check_data(catalog: Catalog, args: argparse.Namespace) -> None:
    """``--check-data[=full]``: every split of the selected datasets, a line each, or one error for all."""
    specs = catalog.resolve(args.suite, args.datasets)
    checks = check_datasets(specs, args.data_root, args.cache_dir, full=args.check_data == "full", progress=not args.no_progress)
    for check in checks:
        print("\n".join(check.summary_lines()))
    print(f"All {len(specs)} dataset(s) passed the {args.check_data} check"
          + (" (images decoded)." if args.check_data == "full" else "; --check-data=full also decodes every image."))


def sweep_request(catalog: Catalog, args: argparse.Namespace) -> SweepRequest:
    if not args.methods:
        raise BenchError("Choose the methods to run with --methods (e.g. --methods sdpt,lora); --list shows them all.")
    method_options: dict[str, dict[str, Any]] = {}
    for key, value in args.method_set:
        method, _, option = key.partition(".")
        if not option:
            raise BenchError(f"--method-set {key}=...: write METHOD.OPTION=VALUE, e.g. sdpt.num_tokens=8.")
        method_options.setdefault(method, {})[option] = value
    return SweepRequest(
        model=args.model,
        methods=args.methods,
        datasets=[spec.name for spec in catalog.resolve(args.suite, args.datasets)],
        weights=args.weights,
        method_options=method_options,
        shots=args.shots,
        seeds=args.seeds,
        split_seeds=args.split_seeds,
        protocol=args.protocol,
        protocol_overrides=dict(args.protocol_set),
        random_init=args.random_init,
    )


def check_results_folder(results: Path) -> None:
    """``--results`` must be a folder this process can write (it is made if missing)."""
    if results.exists() and not results.is_dir():
        raise BenchError(f"--results {results} is a file, not a folder; pass --results a folder (it is created if missing).")
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"--results {results} cannot be created ({err.strerror}); pass --results a folder you can write.") from None
    if not os.access(results, os.W_OK | os.X_OK):
        raise BenchError(f"--results {results} is not writable by this user; pass --results a folder you can write.")


def say_held_out(cells: Sequence[Cell]) -> None:
    """Name the datasets whose validation is held out of their training images (bench.data.holdout)."""
    held = sorted({cell.spec.dataset for cell in cells if cell.spec.validation != DECLARED})
    if held:
        print(f"Validation of {', '.join(held)} is held out of the training images ({HELD_OUT_FRACTION:.0%}, seed "
              f"{HELD_OUT_SEED}; few-shot: from the images outside the sample), because their validation file is "
              "their test file (README: \"Held-out validation\").")


def cells_to_run(cells: Sequence[Cell], context: RunContext, force: bool) -> tuple[list[Cell], dict[str, Owner]]:
    """The cells without a stored result (all with ``force``) that nobody runs now, and the ones another
    runner holds the lease of, with their owners (left to them: no cell runs twice at once)."""
    missing = missing_cells(cells, context.store, force=force)
    running = running_cells(missing, context.store)
    return [cell for cell in missing if cell.key not in running], running


def print_plan(cells: Sequence[Cell], todo: Sequence[Cell], running: Mapping[str, Owner], catalog: Catalog,
               title: str = "") -> None:
    pending = {cell.key for cell in todo}
    for cell in cells:
        s = cell.spec
        state = "todo" if cell.key in pending else "running" if cell.key in running else "done"
        split = "-" if s.shots is None else split_label(s, catalog.dataset(s.dataset))
        values = " ".join(f"{k}={v:g}" for k, v in sorted(s.tuned_values.items()))
        where = f"  ({running[cell.key].describe()})" if cell.key in running else ""
        print(f"{state:<7}  {cell.key}  {s.method_label:<28} {s.dataset:<24} shots={s.shots_label:<4} split={split} "
              f"seed={s.train_seed}" + (f"  {values}" if values else "") + where)
    print(f"{len(cells)} {title}cells: {len(cells) - len(todo) - len(running)} done, "
          + (f"{len(running)} running elsewhere, " if running else "") + f"{len(todo)} to run.")


def split_label(spec: RunSpec, dataset: DatasetSpec) -> str:
    """How a K-shot cell's training split is obtained: ``released`` (the dataset's own file for K
    shots), ``glip`` (GLIP's deterministic sampler) or the sampler's seed."""
    if spec.shots in dataset.released_shots:
        return "released"
    return "glip" if spec.split_seed is None else str(spec.split_seed)


def say_counts(cells: Sequence[Cell], todo: Sequence[Cell], running: Mapping[str, Owner], executor: str, title: str = "") -> None:
    """``12 cells: 4 already done, 2 running elsewhere (left to their runners), running 6 with the local executor.``"""
    elsewhere = f"{len(running)} running elsewhere (left to their runners), " if running else ""
    print(f"{len(cells)} {title}cells: {len(cells) - len(todo) - len(running)} already done, {elsewhere}running "
          f"{len(todo)} with the {executor} executor.")


def print_dry_run_summary(cells: Sequence[Cell], todo: Sequence[Cell], context: RunContext, catalog: Catalog,
                          cost_model: Path | None) -> None:
    """``--dry-run``'s last words: cells done and to run per method and dataset, and what the rest
    will cost, priced from the finished cells in the store (:mod:`bench.runs.estimate`)."""
    print("Per method (done/planned per dataset):")
    print("\n".join(plan_summary(cells, todo)))
    profile = StepProfile.load(cost_model) if cost_model else None
    estimate = estimate_sweep(todo, context.store.load_records()[0], profile, PlannedTrainingImages(context, catalog))
    print(estimate.describe(len(todo)))


@dataclass(frozen=True)
class Launch:
    """How the sweep was asked for: the command line's words and the sweep file, for the sweep log."""

    argv: Sequence[str]
    sweep_file: SweepFile | None = None

    def start_log(self, context: RunContext, args: argparse.Namespace) -> SweepLog:
        """Write the sweep log (:mod:`bench.runs.sweep_log`), once every check has passed."""
        arguments = {key: value for key, value in vars(args).items() if key != "launch"}
        config = None if self.sweep_file is None else (self.sweep_file.path, self.sweep_file.text)
        return SweepLog.start(context.store, self.argv, arguments, config)


def execute(cells: Sequence[Cell], context: RunContext, args: argparse.Namespace) -> SweepOutcome:
    """Run ``cells`` on the chosen executor (:data:`bench.launch.EXECUTORS`); what finished and what failed."""
    if not cells:
        return SweepOutcome()
    return EXECUTORS.get(args.executor).run(cells, context, args)


def run_sweep(catalog: Catalog, args: argparse.Namespace) -> int:
    EXECUTORS.get(args.executor).check(args)
    check_tracker(args.log)
    if not args.frozen_cache_gib >= 0:
        raise BenchError(f"--frozen-cache-gib {args.frozen_cache_gib}: the cache's disk space must be 0 or more GiB "
                         "(0 keeps nothing on disk; --frozen-cache off or memory keeps nothing there either).")
    check_results_folder(args.results)
    request = sweep_request(catalog, args)
    context = RunContext(
        results=args.results, data_root=args.data_root, cache_dir=args.cache_dir, catalog_dir=args.catalog,
        device=args.device, workers=args.workers, progress=not args.no_progress,
        tokenizer=args.tokenizer, allow_unsafe_checkpoint=args.allow_unsafe_checkpoint,
        frozen_cache=args.frozen_cache, frozen_cache_gib=args.frozen_cache_gib, log=args.log,
    )
    if args.tune:
        return run_tuned_sweep(catalog, args, request, context, TuneRequest(args.tune, args.tune_trials, args.tune_scope))
    cells = plan_cells(request, context, catalog, check_images=not args.dry_run)
    say_held_out(cells)
    todo, running = cells_to_run(cells, context, args.force)
    if args.dry_run:
        print_plan(cells, todo, running, catalog)
        print_dry_run_summary(cells, todo, context, catalog, args.cost_model)
        return 0
    say_counts(cells, todo, running, args.executor)
    log = args.launch.start_log(context, args)
    return finish(cells, execute(todo, context, args).left_to(running), context, catalog, args, log)


def run_tuned_sweep(catalog: Catalog, args: argparse.Namespace, request: SweepRequest, context: RunContext,
                    tune: TuneRequest) -> int:
    """Trials (validation only), selection, then every replicate with its selected setting (see
    :mod:`bench.runs.tuning`)."""
    inputs = prepare(request, context, catalog, tuned=True, check_images=not args.dry_run)
    trials = trial_cells(inputs, tune)
    first = trials + untuned_cells(inputs)
    say_held_out(first)
    todo, running = cells_to_run(first, context, args.force)
    print(f"Tuning: {tune.describe()}.")
    if args.dry_run:
        print_plan(first, todo, running, catalog, "trial and untuned ")
    else:
        say_counts(first, todo, running, args.executor, "trial and untuned ")
    log = None if args.dry_run else args.launch.start_log(context, args)
    outcome = SweepOutcome() if args.dry_run else execute(todo, context, args).left_to(running)
    selections, pending = select_settings(trials, validation_scores(trials, stored_records(context, trials)), tune)
    finals = final_cells(inputs, tune, selections)
    final_todo, final_running = cells_to_run(finals, context, args.force)
    if args.dry_run:
        print_plan(finals, final_todo, final_running, catalog, "selected-setting ")
        if pending:
            print(f"{len(pending)} trial(s) still to run, so some selections, and their cells, are not known yet.")
        print_dry_run_summary(first + finals, todo + final_todo, context, catalog, args.cost_model)
        return 0
    for selection in selections.values():
        where = selection.dataset or "all datasets"
        values = ", ".join(f"{k}={v:g}" for k, v in selection.values.items())
        print(f"selected {selection.method} on {where} (shots {selection.shots or 'full'}): {values} "
              f"(val AP {100 * selection.val_score:.1f} of {len(selection.trials)} trials)")
    say_counts(finals, final_todo, final_running, args.executor, "selected-setting ")
    outcome = outcome.merge(execute(final_todo, context, args).left_to(final_running))
    return finish([cell for cell in first if not cell.spec.is_trial] + finals, outcome, context, catalog, args, log, trials)


def stored_records(context: RunContext, cells: Sequence[Cell]) -> dict[str, RunRecord]:
    """The stored records of ``cells`` that exist and read, by key."""
    keys = {cell.key for cell in cells}
    return {r.key: r for r in context.store.load_records()[0] if r.key in keys}


def finish(cells: Sequence[Cell], outcome: SweepOutcome, context: RunContext, catalog: Catalog, args: argparse.Namespace,
           log: SweepLog, trials: Sequence[Cell] = ()) -> int:
    """Report the sweep's scored cells (and the tuning trials behind them), complete its ``log`` and say
    what failed: what a rerun cannot fix apart from what a rerun resumes."""
    records = list(stored_records(context, cells).values())
    log.finish(len(cells), len(records), len(outcome.failed))
    if records:  # when every cell failed there is nothing to tabulate; say why below instead
        report(records, args.results, catalog, suites=[args.suite] if args.suite else [], reference=args.reference,
               trials=list(stored_records(context, trials).values()))
    if outcome.leased:
        labels = {cell.key: cell_label(cell) for cell in [*cells, *trials]}
        print(f"{len(outcome.leased)} cell(s) were being run by another runner and were left to it (their leases are in "
              f"{context.store.leases_dir}):\n" + "\n".join(f"  {labels.get(key, key)}: {holder}"
                                                         for key, holder in sorted(outcome.leased.items()))
              + "\nTheir results land in this results folder; `run_bench.py report` tabulates them once they have finished.")
    transient = len(outcome.transient)
    deterministic = len(outcome.failed) - transient
    if deterministic:
        print(f"{deterministic} cell(s) failed for a reason a rerun cannot fix (an option, the weights or the data; the "
              f"error of each is above, its traceback in {context.store.failed_dir}). Change what the error names, then "
              "run the command again: finished cells are kept.", file=sys.stderr)
    if transient:
        print(f"{transient} cell(s) were stopped by their circumstances (out of memory, killed, preempted, an I/O "
              f"error; details in {context.store.failed_dir}). Run the same command again to resume them from their "
              "last checkpoint.", file=sys.stderr)
    return 1 if outcome.failed else 0


def report(records: Sequence[RunRecord], results: Path, catalog: Catalog, suites: Sequence[str],
           reference: str | None = None, trials: Sequence[RunRecord] = ()) -> None:
    """Write and print the leaderboards of ``records`` for ``suites`` (names), their comparisons with
    ``reference`` (None: each group's best row) and the ``trials`` that tuned them."""
    if not records:
        raise BenchError(f"No finished runs in {results / 'runs' / 'done'}; run a sweep first (python run_bench.py --methods ... --suite ...).")
    from bench.report import write_report  # pandas and matplotlib: only when there is something to report

    if suites:
        chosen = [catalog.suite(name) for name in suites]
    else:  # every suite the results cover completely; none: the mean over the datasets present
        present = {record.spec.dataset for record in records}
        chosen = [entry.obj for entry in catalog.suites if set(entry.obj.datasets) <= present]
    files = write_report(records, results, suites=chosen, reference=reference, trials=trials, catalog=catalog)
    print(files.leaderboard_markdown.read_text())
    print(files.comparisons_markdown.read_text())
    if files.published:
        print(files.published[1].read_text())
    written = "leaderboard, per-shots table, comparisons" + (", tuning trials" if files.tuning else "") + " and figures"
    print(f"The {written} are written under {results}; all of it on one page: {files.html}")


def report_main(argv: Sequence[str]) -> int:
    args = build_report_parser().parse_args(argv)
    catalog = Catalog.with_user_folder(args.catalog)
    from bench.runs.store import RunStore

    records, _ = RunStore(args.results / "runs").load_records()
    trials = [r for r in records if r.spec.is_trial]  # validation only: listed, never scored
    report([r for r in records if not r.spec.is_trial], args.results, catalog, args.suite, args.reference, trials)
    return 0


def eval_main(argv: Sequence[str]) -> int:
    """``run_bench.py eval --tuned PATH``: score a tuned state alone (:mod:`bench.runs.evaluate_tuned`)."""
    from bench.runs.evaluate_tuned import describe, evaluate_tuned

    args = build_eval_parser().parse_args(argv)
    context = RunContext(results=args.results, data_root=args.data_root, cache_dir=args.cache_dir, catalog_dir=args.catalog,
                         device=args.device, progress=not args.no_progress, tokenizer=args.tokenizer,
                         allow_unsafe_checkpoint=args.allow_unsafe_checkpoint)
    print(describe(evaluate_tuned(args.tuned, context, args.dataset, args.split, args.weights)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = default_arguments()
        print(f"No arguments: running the default benchmark, python run_bench.py {shlex.join(argv)}", flush=True)
    try:
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        if argv[:1] == ["eval"]:
            return eval_main(argv[1:])
        parser = build_parser()
        config, given = split_config_option(argv)
        sweep_file = load_sweep_file(config, parser) if config is not None else None
        args = parser.parse_args([*sweep_file.arguments, *given] if sweep_file else given)
        args.launch = Launch(argv, sweep_file)
        catalog = Catalog.with_user_folder(args.catalog)
        if args.list:
            print_catalog(catalog, verbose=args.verbose)
        elif args.check_data:
            check_data(catalog, args)
        elif args.methods or args.dry_run:
            return run_sweep(catalog, args)
        else:
            parser.print_help()
            print("\nChoose --methods and --suite (or --datasets) to run a sweep, or --list / --check-data.")
            return 2
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. Finished cells are kept and interrupted ones resume from their last checkpoint when the same "
              "command runs again.", file=sys.stderr)
        return 130
    return 0
