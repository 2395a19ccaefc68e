"""Sweep files (``--config``): the same fields as the flags, flags win, bad files are one paragraph,
and the file's text lands in the sweep log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import build_parser, default_arguments, main
from bench.errors import BenchError
from bench.sweep_file import load_sweep_file, split_config_option
from tests.run_support import synthetic_cache

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET = "shapes-colours"


def parsed(argv: list[str]):
    """What the CLI parses for ``argv`` (sweep file first, then the flags), as main does."""
    parser = build_parser()
    config, given = split_config_option(argv)
    words = load_sweep_file(config, parser).arguments if config is not None else ()
    return parser.parse_args([*words, *given])


def comparable(namespace) -> dict:
    return {key: value for key, value in vars(namespace).items() if key != "config"}


def test_the_headline_sweep_file_says_what_the_headline_flags_say():
    from_file = parsed(["--config", str(REPOSITORY / "sweeps" / "odinw13.yaml")])
    from_flags = parsed(["--model", "glip-t", "--methods", "sdpt,vpt,lora", "--suite", "odinw13", "--shots", "1,3,5,10,full",
                         "--seeds", "0,1,2", "--protocol", "glip-odinw", "--tune", "lr", "--tune-trials", "3"])
    assert comparable(from_file) == comparable(from_flags)
    assert from_file.methods == ["sdpt", "vpt", "lora"] and from_file.shots == [1, 3, 5, 10, None]


def test_the_default_benchmark_file_is_the_default_arguments():
    from_file = parsed(["--config", str(REPOSITORY / "sweeps" / "shapes-mini.yaml")])
    defaults = parsed(default_arguments())
    assert comparable(from_file) == comparable(defaults) | {"jobs": from_file.jobs}


def test_flags_override_the_file_and_options_merge_key_by_key(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("methods: [sdpt, lora]\nseeds: [0, 1]\nmethod_set: {sdpt.num_tokens: 8, lora.rank: 4}\n"
                     "protocol-set: {max_steps: 5}\ndry-run: true\n")
    args = parsed(["--seeds", "7", "--config", str(sweep), "--method-set", "sdpt.num_tokens=2"])
    assert args.methods == ["sdpt", "lora"] and args.seeds == [7] and args.dry_run
    assert dict(args.method_set) == {"sdpt.num_tokens": 2, "lora.rank": 4}
    assert dict(args.protocol_set) == {"max_steps": 5}


@pytest.mark.parametrize("text, expected", [
    ("methods: [sdpt\n", "is not valid YAML at line"),
    ("- sdpt\n- lora\n", "holds a YAML list, not a mapping"),
    ("method: sdpt\n", "key 'method', which is no option of run_bench.py. Did you mean 'methods'?"),
    ("methods: {sdpt: 1}\n", "methods is {\"sdpt\": 1}, but it takes one value or a list"),
    ("dry-run: maybe\n", "dry-run is \"maybe\", but it takes true or false"),
    ("method-set: [sdpt.num_tokens=8]\n", "takes a mapping of KEY: VALUE"),
    ("config: other.yaml\n", "sweep files do not nest"),
], ids=["yaml", "list", "unknown-key", "mapping-for-list", "switch", "pairs", "nested"])
def test_a_bad_sweep_file_is_refused_naming_the_file_and_the_fix(tmp_path, capsys, text, expected):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    assert main(["--config", str(sweep), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(sweep) in err, err
    assert expected in err
    assert not (tmp_path / "results").exists()  # refused before anything was written


def test_a_missing_sweep_file_is_refused(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_sweep_file(tmp_path / "nope.yaml", build_parser())


@pytest.mark.slow
def test_a_sweep_from_a_file_runs_and_its_text_lands_in_the_sweep_log(tmp_path_factory, tmp_path, capsys):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    sweep = tmp_path / "sweep.yaml"
    text = (f"# a tiny sweep\nmethods: [zero-shot]\ndatasets: [{DATASET}]\nprotocol: shapes\n"
            "protocol-set: {max_steps: 2, warmup_steps: 0, eval_every: 2, batch_size: 2}\nno-progress: true\n")
    sweep.write_text(text)
    results = tmp_path / "results"
    assert main(["--config", str(sweep), "--results", str(results), "--cache-dir", str(cache)]) == 0
    [log_file] = (results / "runs" / "sweeps").glob("*.json")
    log = json.loads(log_file.read_text())
    assert log["config"] == {"path": str(sweep), "text": text}
    assert log["argv"] == ["--config", str(sweep), "--results", str(results), "--cache-dir", str(cache)]
    assert log["arguments"]["methods"] == ["zero-shot"] and log["arguments"]["protocol_set"][0] == ["max_steps", 2]
    assert log["cells"] == {"planned": 1, "finished": 1, "failed": 0} and log["ended"] >= log["started"]
    assert len(list((results / "runs" / "done").glob("*.json"))) == 1
