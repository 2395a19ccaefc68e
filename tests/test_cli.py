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
    assert err.startswith("error: Unknown suite 'odinw'. Did you mean 'odinw13'?")
    assert "Traceback" not in err


def test_missing_data_root_is_explained(capsys, tmp_path):
    assert main(["--suite", "coco", "--check-data", "--data-root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_bench_script_help():
    result = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    assert "--data-root" in result.stdout and "--list" in result.stdout


def test_executors_are_reached_through_their_registry(monkeypatch):
    """``--executor NAME`` runs whatever ``bench.launch.EXECUTORS`` holds under NAME."""
    import argparse

    from bench.cli import execute
    from bench.launch import EXECUTORS
    from bench.launch.local import SweepOutcome

    assert EXECUTORS.names() == ["local", "slurm"]
    calls = []
    monkeypatch.setitem(EXECUTORS._entries, "slurm", EXECUTORS.entry("slurm").__class__(
        "slurm", lambda cells, context, args: calls.append((cells, args.executor)) or SweepOutcome(finished=["k"]), ""))
    outcome = execute(["cell"], context=None, args=argparse.Namespace(executor="slurm"))
    assert calls == [(["cell"], "slurm")] and outcome.finished == ["k"]
