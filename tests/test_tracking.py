"""--log: trained cells' curves go to an optional tracker (each step once, also across a resume),
a missing package stops a sweep before it starts, and without --log nothing is logged at all."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType, SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.cli import main
from bench.launch.local import run_local
from bench.runs.plan import plan_cells
from bench.runs.store import RunStore
from bench.train.optim import LearningRateSchedule
from bench.train.tracking import TRACKERS, TrackedRun
from tests.run_support import quiet_context, synthetic_cache, tiny_request

DATASET = "shapes-colours"
STEPS, EVAL_EVERY = 4, 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory, [DATASET])


@pytest.fixture
def sweep_args(cache, tmp_path):
    """A tiny sweep of zero-shot (trains nothing) and SDPT through the command line."""

    def build(*extra: str) -> list[str]:
        protocol = (f"max_steps={STEPS}", "warmup_steps=0", f"eval_every={EVAL_EVERY}", "batch_size=2")
        return ["--methods", "zero-shot,sdpt", "--method-set", "sdpt.num_tokens=4", "--datasets", DATASET,
                "--protocol", "shapes", *[a for kv in protocol for a in ("--protocol-set", kv)], "--device", "cpu",
                "--results", str(tmp_path / "results"), "--cache-dir", str(cache), "--no-progress", *extra]

    return build


def logged_steps(folder) -> dict[str, list[int]]:
    """{tag: the steps TensorBoard shows for it} of the event files in ``folder``."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logs_every_step_of_a_trained_cell_and_each_validation(sweep_args, tmp_path):
    assert main(sweep_args("--log", "tensorboard")) == 0
    records, _ = RunStore(tmp_path / "results" / "runs").load_records()
    [trained] = [r for r in records if r.spec.method == "sdpt"]
    logs = tmp_path / "results" / "logs" / "tensorboard"
    assert [p.name for p in logs.iterdir()] == [trained.key]  # zero-shot trains nothing: no run of its own
    steps = logged_steps(logs / trained.key)
    assert steps["train/loss"] == steps["train/lr"] == list(range(1, STEPS + 1))
    assert steps["val/AP"] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    events = EventAccumulator(str(logs / trained.key))
    events.Reload()
    assert any(e.value == pytest.approx(trained.val["AP"]) for e in events.Scalars("val/AP"))  # the selected one
    assert all(e.value > 0 for e in events.Scalars("train/loss") + events.Scalars("train/lr"))


def test_a_resumed_cell_logs_each_step_once(cache, tmp_path, monkeypatch):
    """Interrupted after step 3 with its checkpoint at step 2, the cell resumes at step 3: the step 3
    logged before the interruption is replaced, not shown twice."""
    context = quiet_context(tmp_path / "results", cache, log="tensorboard")
    protocol = {"max_steps": 4, "warmup_steps": 0, "eval_every": 4, "batch_size": 2, "checkpoint_every": 2}
    [cell] = plan_cells(tiny_request(["bitfit"], [DATASET], protocol_overrides=protocol), context)
    original = LearningRateSchedule.step

    def interrupt_before_step_4(schedule, done):
        if done == 3:
            raise KeyboardInterrupt
        original(schedule, done)

    with monkeypatch.context() as patch:
        patch.setattr(LearningRateSchedule, "step", interrupt_before_step_4)
        with pytest.raises(KeyboardInterrupt):
            run_local([cell], context)
    assert logged_steps(tmp_path / "results" / "logs" / "tensorboard" / cell.key)["train/loss"] == [1, 2, 3]
    assert run_local([cell], context).finished == [cell.key]
    steps = logged_steps(tmp_path / "results" / "logs" / "tensorboard" / cell.key)
    assert steps["train/loss"] == steps["train/lr"] == [1, 2, 3, 4] and steps["val/AP"] == [4]


def test_a_missing_wandb_stops_the_sweep_before_any_cell(sweep_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, installed or not
    assert main(sweep_args("--log", "wandb")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --log wandb needs the wandb package") and "Traceback" not in captured.err
    assert "pip install 'vl-peft-bench[wandb]'" in captured.err and "pip install wandb" in captured.err
    assert "running" not in captured.out
    assert not (tmp_path / "results" / "runs" / "done").exists()


def test_without_log_nothing_is_logged(sweep_args, tmp_path):
    assert main(sweep_args("--protocol-set", "max_steps=1")) == 0
    assert (tmp_path / "results" / "runs" / "done").is_dir()
    assert not (tmp_path / "results" / "logs").exists()


def test_wandb_runs_offline_under_the_results_folder(tmp_path, monkeypatch):
    """wandb is not a test dependency: a stand-in module records what the tracker asks of it."""
    calls = SimpleNamespace(init=None, logged=[], finished=False)

    def init(**options):
        calls.init = options
        return SimpleNamespace(log=lambda data, step: calls.logged.append((step, data)),
                               finish=lambda: setattr(calls, "finished", True))

    monkeypatch.setitem(sys.modules, "wandb", ModuleType("wandb"))
    monkeypatch.setattr(sys.modules["wandb"], "init", init, raising=False)
    kind = TRACKERS.get("wandb")
    kind.check("wandb")
    tracker = kind.open(TrackedRun("k3y", {"method": "sdpt"}, tmp_path / "logs"))
    assert calls.init is None  # nothing is opened before the first step
    tracker.log({"train/loss": 1.5}, 1)
    tracker.close()
    assert calls.init == {"mode": "offline", "dir": str(tmp_path / "logs" / "wandb"), "name": "k3y", "id": "k3y",
                          "config": {"method": "sdpt"}}
    assert (tmp_path / "logs" / "wandb").is_dir() and calls.logged == [(1, {"train/loss": 1.5})] and calls.finished


def test_importing_the_benchmark_imports_no_tracker_package():
    code = ("import sys, bench.cli, bench.runs.cell; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'wandb') or 'tensorboard' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
