"""The command line: listing the catalog, checking data, and explaining mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_list_shows_models_suites_and_datasets(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "glip-t" in out and "glip-l" in out
    assert "sdpt " in out and "lora " in out and "zero-shot" in out
    assert "odinw13" in out and "odinw-thermal" in out and "lvis-minival" in out


def test_unknown_suite_is_a_one_line_error(capsys):
    assert main(["--suite", "odinw", "--check-data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown suite 'odinw'. Did you mean 'odinw13' or 'odinw35'?")
    assert "Traceback" not in err


def test_missing_data_root_is_explained(capsys, tmp_path):
    assert main(["--suite", "coco", "--check-data", "--data-root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_bench_script_help():
    result = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    assert "--data-root" in result.stdout and "--list" in result.stdout


def test_a_toy_executor_runs_a_sweep_without_touching_the_cli(monkeypatch, tmp_path, tmp_path_factory, capsys):
    """An executor registered in ``bench.launch.EXECUTORS`` gets its own option, its check and the
    sweep's cells; the command line names no executor."""
    from bench.launch import EXECUTORS
    from bench.launch.base import SweepOutcome, run_cell_recording_failure
    from bench.registry import Entry
    from tests.run_support import synthetic_cache

    seen = {}

    class ToyExecutor:
        def add_arguments(self, parser):
            parser.add_argument_group("toy").add_argument("--toy-note", default="")

        def check(self, args):
            seen["checked"] = args.toy_note

        def run(self, cells, context, args):
            outcome = SweepOutcome()
            for cell in cells:
                outcome.add(cell, run_cell_recording_failure(cell, context), context.store)
            seen["cells"] = len(cells)
            return outcome

    monkeypatch.setitem(EXECUTORS._entries, "toy", Entry("toy", ToyExecutor(), "runs cells in this process"))
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    code = main(["--model", "glip-nano", "--datasets", "shapes-colours", "--methods", "zero-shot", "--protocol", "shapes",
                 "--cache-dir", str(cache), "--results", str(tmp_path), "--device", "cpu", "--no-progress",
                 "--executor", "toy", "--toy-note", "hello"])
    assert code == 0
    assert seen == {"checked": "hello", "cells": 1}
    assert len(list((tmp_path / "runs" / "done").glob("*.json"))) == 1
    capsys.readouterr()
    assert main(["--list"]) == 0
    assert "toy                    runs cells in this process" in capsys.readouterr().out
