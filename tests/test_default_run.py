"""The default benchmark (``python run_bench.py`` without arguments), reduced to two methods on one
dataset and a few steps (its lr tuning and three replicates kept), run through the real command line
with two cells at once."""

from __future__ import annotations

import pandas as pd

from bench.cli import DEFAULT_METHODS, default_arguments, main
from bench.models import PACKAGED_WEIGHTS
from bench.runs.store import RunStore
from bench.tuning.base import METHODS, build_method
from tests.run_support import synthetic_cache

DATASET = "shapes-sizes"
REDUCED_METHODS = ("zero-shot", "sdpt")
STEPS = 3


def _replace(args: list[str], option: str, value: str) -> list[str]:
    position = args.index(option)
    return [*args[:position], option, value, *args[position + 2:]]


def test_default_run_covers_every_method_family_on_the_pretrained_nano():
    args = default_arguments()
    assert args[args.index("--model") + 1] == "glip-nano" and "glip-nano" in PACKAGED_WEIGHTS
    assert args[args.index("--suite") + 1] == "shapes-odinw-mini" and args[args.index("--protocol") + 1] == "shapes"
    assert args[args.index("--tune") + 1] == "lr" and len(args[args.index("--seeds") + 1].split(",")) >= 3
    shots = args[args.index("--shots") + 1].split(",")
    assert "full" in shots and any(s.isdigit() for s in shots)  # full data and a few-shot setting
    assert args[args.index("--protocol-set") + 1] == "retention=true"
    methods = args[args.index("--methods") + 1].split(",")
    assert tuple(methods) == DEFAULT_METHODS
    build_method("zero-shot")  # registers every method
    assert set(methods) <= {entry.name for entry in METHODS}
    assert {"zero-shot", "linear-probe", "glip-prompt", "coop", "vpt", "maple", "sdpt", "lora", "full"} <= set(methods)


def test_reduced_default_run_writes_the_leaderboard_files(tmp_path_factory, capsys):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    results = tmp_path_factory.mktemp("default-run") / "results"
    args = _replace(default_arguments(), "--methods", ",".join(REDUCED_METHODS))
    suite = args.index("--suite")
    args = [*args[:suite], *args[suite + 2:], "--datasets", DATASET]
    args = _replace(args, "--jobs", "2")
    assert main([*args, "--protocol-set", f"max_steps={STEPS}", "--protocol-set", "warmup_steps=0", "--results", str(results), "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    board = pd.read_csv(results / "leaderboard.csv")
    assert set(board["method"]) == set(REDUCED_METHODS)
    assert (results / "leaderboard.md").read_text() in printed
    assert any(path.suffix == ".png" for path in (results / "figures").iterdir())
    records, _ = RunStore(results / "runs").load_records()
    finals = [r for r in records if not r.spec.is_trial]
    trials = [r for r in records if r.spec.is_trial]
    # per shots (5 and full): zero-shot once; sdpt: 3 lr trials on the first replicate, then 3
    # replicates with the selected lr, each 5-shot replicate on its own split
    assert sorted((r.spec.method, r.spec.shots or 0) for r in finals) == sorted(
        [("sdpt", 5)] * 3 + [("sdpt", 0)] * 3 + [("zero-shot", 5), ("zero-shot", 0)])
    assert len(trials) == 6 and {r.spec.method for r in trials} == {"sdpt"}
    assert {r.spec.train_seed for r in finals if r.spec.method == "sdpt"} == {0, 1, 2}
    assert len({r.spec.split_seed for r in finals if r.spec.method == "sdpt" and r.spec.shots == 5}) == 3
    assert all(r.retention for r in finals) and (results / "figures" / "ap_vs_retention_loss.png").is_file()
    assert (results / "tuning.md").is_file() and (results / "comparisons.md").is_file()
    assert all(r.spec.weights == str(PACKAGED_WEIGHTS["glip-nano"].resolve()) for r in records)
    assert all(r.cost.train_steps == (0 if r.spec.method == "zero-shot" else STEPS) for r in records)
