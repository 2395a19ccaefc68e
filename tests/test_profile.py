"""``python -m bench.profile``: every row measured in its own process, ratios to full, bad input refused."""

from __future__ import annotations

import json

from bench.profile.__main__ import main


def test_each_method_and_the_reference_rows_get_a_step_time_and_a_peak(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["--size", "64x64", "--methods", "sdpt,full", "--steps", "1", "--device", "cpu", "--out", str(out)]) == 0
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"sdpt", "full", "frozen", "zero-shot"}
    assert all(row["seconds"] > 0 and row["peak_memory_gib"] > 0 for row in rows.values())
    assert rows["sdpt"]["trainable"] == 25_600 and rows["frozen"]["trainable"] == 0 and rows["zero-shot"]["trainable"] == 0
    printed = capsys.readouterr().out
    assert "glip-nano at 64x64, batch 1, 5-class caption" in printed
    full_line = next(line for line in printed.splitlines() if line.startswith("| full "))
    assert float(full_line.split("|")[4]) == 1.0  # full is its own reference


def test_bad_input_is_refused_before_any_process_starts(capsys):
    assert main(["--model", "glip-t", "--size", "64x64"]) == 2
    assert "--model glip-t needs --weights, or --random-init" in capsys.readouterr().err
    assert main(["--methods", "sdtp", "--size", "64x64"]) == 2
    assert "Did you mean 'sdpt'?" in capsys.readouterr().err
