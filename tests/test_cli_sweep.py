"""The sweep command line: mistakes are one-line errors with exit code 2, and --dry-run shows the plan."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from tests.run_support import plan_lines, synthetic_cache

DATASET = "shapes-colours"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory, [DATASET])


@pytest.fixture
def sweep_args(cache, tmp_path):
    """A valid tiny sweep; tests replace or append options."""

    def build(*extra: str, methods: str = "zero-shot,sdpt", datasets: str = DATASET) -> list[str]:
        return ["--methods", methods, "--datasets", datasets, "--protocol", "shapes", "--results", str(tmp_path / "results"),
                "--cache-dir", str(cache), "--no-progress", *extra]

    return build


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "change, suggestion",
    [
        ({"methods": "zero-shot,sdtp"}, "Did you mean 'sdpt'?"),
        ({"datasets": "shapes-colour"}, "Did you mean 'shapes-colours'?"),
        ({"extra": ("--model", "glip-nan")}, "Did you mean 'glip-nano'?"),
        ({"extra": ("--protocol", "shape")}, "Did you mean 'shapes'?"),
        ({"extra": ("--suite", "shapes-odnw")}, "Did you mean 'shapes-odinw'?"),
    ],
    ids=["method", "dataset", "model", "protocol", "suite"],
)
def test_an_unknown_name_is_an_error_with_a_suggestion(sweep_args, capsys, change, suggestion):
    args = sweep_args(*change.get("extra", ()), **{k: v for k, v in change.items() if k != "extra"})
    assert main([*args, "--dry-run"]) == 2
    assert suggestion in error_of(capsys)


@pytest.mark.parametrize("shots", ["0", "two", "1,-3", "1.5"])
def test_bad_shots_are_rejected_by_the_parser(sweep_args, capsys, shots):
    with pytest.raises(SystemExit) as exited:
        main(sweep_args("--shots", shots, "--dry-run"))
    assert exited.value.code == 2
    assert "shots must be positive integers or 'full'" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, says", [("--seeds", "0,one", "comma-separated integers"),
                                                 ("--split-seeds", "glip,x", "split seeds are integers or 'glip'")])
def test_bad_seeds_are_rejected_by_the_parser(sweep_args, capsys, option, value, says):
    with pytest.raises(SystemExit) as exited:
        main(sweep_args(option, value, "--dry-run"))
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_a_missing_weights_file_is_explained(sweep_args, capsys, tmp_path):
    assert main(sweep_args("--weights", str(tmp_path / "glip_nano.pth"), "--dry-run")) == 2
    err = error_of(capsys)
    assert "glip_nano.pth does not exist" in err and "--weights" in err


def test_a_real_dataset_without_a_data_root_is_explained(sweep_args, capsys):
    assert main([*sweep_args(datasets="odinw-aquarium"), "--dry-run"]) == 2
    assert "no data root was given. Pass --data-root" in error_of(capsys)


def test_a_missing_data_root_and_missing_dataset_folders_are_explained(sweep_args, capsys, tmp_path):
    assert main([*sweep_args(datasets="odinw-aquarium"), "--data-root", str(tmp_path / "none"), "--dry-run"]) == 2
    assert "does not exist" in error_of(capsys)
    (tmp_path / "data").mkdir()
    assert main([*sweep_args(datasets="odinw-aquarium"), "--data-root", str(tmp_path / "data"), "--dry-run"]) == 2
    err = error_of(capsys)
    assert "missing under --data-root" in err and "odinw-aquarium" in err and "Nothing was run" in err


@pytest.mark.parametrize(
    "assignment, says",
    [
        ("sdpt.bogus=1", "Unknown option(s) ['bogus'] for SdptConfig; valid options: lr (default"),
        ("lora.rank=4", "Options were given for the method 'lora', which is not in --methods"),
        ("sdpt=4", "write METHOD.OPTION=VALUE"),
    ],
)
def test_bad_method_options_are_explained(sweep_args, capsys, assignment, says):
    assert main(sweep_args("--method-set", assignment, "--dry-run")) == 2
    assert says in error_of(capsys)


@pytest.mark.parametrize(
    "assignment, says",
    [("epoch=3", "Unknown protocol field(s) ['epoch']; valid fields:"), ("batch_size=four", "batch_size must be an integer >= 1, got 'four' (text)")],
)
def test_bad_protocol_fields_are_explained(sweep_args, capsys, assignment, says):
    assert main(sweep_args("--protocol-set", assignment, "--dry-run")) == 2
    assert says in error_of(capsys)


def test_no_methods_is_explained(cache, capsys):
    assert main(["--datasets", DATASET, "--cache-dir", str(cache), "--dry-run"]) == 2
    assert "Choose the methods to run with --methods" in error_of(capsys)


def test_dry_run_lists_every_cell_as_todo_and_sums_up(sweep_args, capsys, tmp_path):
    assert main(sweep_args("--shots", "1,full", "--seeds", "0,1", "--method-set", "sdpt.num_tokens=8", "--dry-run")) == 0
    lines = plan_lines(capsys.readouterr().out)
    # sdpt: 2 one-shot splits + 2 full-data seeds; zero-shot trains nothing, so one cell per shots
    assert lines[-1] == "6 cells: 0 done, 6 to run."
    rows = [line.split() for line in lines[:-1]]
    assert len(rows) == 6 and all(row[0] == "todo" for row in rows)
    assert len({row[1] for row in rows}) == 6
    assert {tuple(row[4:]) for row in rows if row[2] == "sdpt[num_tokens=8]"} == {
        ("shots=1", "split=0", "seed=0"), ("shots=1", "split=1", "seed=1"),
        ("shots=full", "split=-", "seed=0"), ("shots=full", "split=-", "seed=1"),
    }
    assert {tuple(row[4:]) for row in rows if row[2] == "zero-shot"} == {
        ("shots=1", "split=glip", "seed=0"), ("shots=full", "split=-", "seed=0"),
    }
    assert not (tmp_path / "results" / "runs" / "done").exists()  # nothing ran


def test_dry_run_crosses_split_seeds_with_training_seeds(sweep_args, capsys):
    assert main(sweep_args("--shots", "3", "--seeds", "0,1", "--split-seeds", "glip,7", "--dry-run", methods="sdpt")) == 0
    lines = plan_lines(capsys.readouterr().out)
    assert lines[-1] == "4 cells: 0 done, 4 to run."
    assert {tuple(line.split()[5:]) for line in lines[:-1]} == {
        ("split=glip", "seed=0"), ("split=glip", "seed=1"), ("split=7", "seed=0"), ("split=7", "seed=1"),
    }


def test_a_sweep_whose_cells_all_fail_exits_1_and_says_where_the_errors_are(sweep_args, capsys, tmp_path):
    # 100 CoOp context vectors do not fit glip-nano's 64 text slots: a valid option that fails when installed
    args = sweep_args("--method-set", "coop.context_tokens=100", "--protocol-set", "max_steps=1", "--protocol-set", "warmup_steps=0", methods="coop")
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "1 cells: 0 already done, running 1 with the local executor." in captured.out
    assert "FAILED coop[context_tokens=100] on shapes-colours" in captured.err
    assert "1 cell(s) failed for a reason a rerun cannot fix" in captured.err
    assert f"its traceback in {tmp_path / 'results' / 'runs' / 'failed'}" in captured.err
    assert "Run the same command again to resume" not in captured.err
    assert len(list((tmp_path / "results" / "runs" / "failed").glob("*.json"))) == 1


def test_a_tiny_sweep_runs_end_to_end_and_a_second_call_runs_nothing(sweep_args, capsys, tmp_path):
    args = sweep_args("--method-set", "sdpt.num_tokens=4", *[a for kv in ("max_steps=2", "warmup_steps=0", "eval_every=2", "batch_size=2")
                                                            for a in ("--protocol-set", kv)])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 cells: 0 already done, running 2 with the local executor." in out
    assert "comparisons and figures are written under" in out
    done = tmp_path / "results" / "runs" / "done"
    assert len(list(done.glob("*.json"))) == 2
    finished = [line for line in out.splitlines() if line.startswith("done ")]
    assert len(finished) == 2 and all("val AP" in line and "test AP" in line and str(done) in line for line in finished)
    assert sum("tuned weights" in line and "selected.safetensors" in line for line in finished) == 1  # sdpt, not zero-shot
    assert main(args) == 0
    assert "2 cells: 2 already done, running 0 with the local executor." in capsys.readouterr().out
    assert main([*args, "--seeds", "0,1", "--dry-run"]) == 0  # zero-shot has no seeds: one sdpt cell to run
    out = capsys.readouterr().out
    assert "h for 1 cell(s) from the wall times of 1 finished cell(s)" in out
    assert "shapes-colours 1/2" in out
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps([{"model": "glip-nano", "method": "lora", "seconds": 0.2, "batch": 1, "device_name": "cpu",
                                    "height": 64, "width": 64, "amp": "none"}]))
    tiny = [a for kv in ("max_steps=2", "warmup_steps=0", "eval_every=2", "batch_size=2") for a in ("--protocol-set", kv)]
    assert main(sweep_args(*tiny, "--dry-run", "--cost-model", str(profile), methods="lora")) == 0
    # 2 steps of batch 2 (TINY protocol) = 4 training images at 0.2 s each
    assert "at most 0.0 h of training for 1 cell(s) from the step-time profile (cpu, 64x64, amp none" in capsys.readouterr().out


def test_report_without_results_is_explained(capsys, tmp_path):
    assert main(["report", "--results", str(tmp_path / "results")]) == 2
    assert "No finished runs in" in error_of(capsys)


def test_a_dataset_whose_validation_is_its_test_is_planned_with_held_out_validation(capsys, tmp_path):
    root = tmp_path / "data"
    for split in ("train2017", "val2017", "annotations"):
        (root / "coco" / split).mkdir(parents=True)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        (root / "coco" / "annotations" / name).write_text("{}")
    assert main(["--methods", "sdpt", "--suite", "coco", "--data-root", str(root), "--protocol", "glip-odinw",
                 "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Validation of coco is held out of the training images" in out
    assert "1 cells: 0 done, 1 to run." in out
