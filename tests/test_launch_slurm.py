"""The SLURM executor end to end, on a real cluster (e.g. ``scripts/local_slurm.sh start DIR``).

Skipped, with the reason, when no controller is reachable; failed instead with BENCH_REQUIRE_SLURM=1
(see ``tests/slurm_support.py``). Every cell runs ``glip-nano`` (packaged weights) on a copy of
shapes-colours whose val and test splits are cut to a few images, because on CPU evaluation is most
of a cell's time.

- One sweep (zero-shot, BitFit, and a CoOp configuration that fails inside the job) runs as one job
  array; its records equal those of the same sweep run by the local executor, the failing cell is
  reported and does not stop the others.
- A second sweep of two BitFit cells is interrupted mid-training: one task gets the time-out /
  preemption signal (submitit checkpoints and requeues it), the other is cancelled (the retry
  round resubmits it). Both end with a result and resumed from their checkpoints.
- Cluster errors (no sbatch, no controller, an unknown partition) are BenchErrors that say what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.errors import BenchError
from bench.launch.local import run_local
from bench.launch.base import read_attempts
from bench.launch.slurm import SlurmOptions, restarts_note, run_slurm
from bench.runs.cell import SELECTED_WEIGHTS
from bench.runs.plan import plan_cells
from bench.train.checkpoint import CHECKPOINT
from tests.run_support import quiet_context, synthetic_cache, tiny_request
from tests.slurm_support import SlurmCluster, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)


def on_the_cluster(test):
    """Marks a test that runs jobs on the cluster (the error tests at the end run none)."""
    return pytest.mark.slurm(pytest.mark.slow(test))


def soaking_on_the_cluster(test):
    """A cluster test of the interrupted sweep (a minute and more of signals, requeues and waits): run by
    make test-soak, which CI runs after make test."""
    return pytest.mark.soak(on_the_cluster(test))


DATASET = "tiny-colours"
EVAL_IMAGES = 4
PROTOCOL = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "batch_size": 2, "checkpoint_every": 1}
INTERRUPTED_PROTOCOL = {"max_steps": 4, "warmup_steps": 0, "eval_every": 4, "batch_size": 2, "checkpoint_every": 1}
"""A BitFit step takes seconds on two busy cores: the first checkpoint comes well before the end."""
FAILING_COOP = {"context_tokens": 100}  # more context vectors than glip-nano's 64 text slots: fails when installed
SWEEP_TIMEOUT_S = 300
CATALOG = f"""
defaults:
  splits:
    train: {{images: train, annotations: train/annotations.json}}
    val: {{images: val, annotations: val/annotations.json}}
    test: {{images: test, annotations: test/annotations.json}}
datasets:
  {DATASET}: {{root: {DATASET}}}
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(data root, catalog folder): shapes-colours with val and test cut to EVAL_IMAGES images."""
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    root = tmp_path_factory.mktemp("slurm-data")
    target = root / "data" / DATASET
    shutil.copytree(cache / "synthetic" / "shapes-odinw" / "colours", target)
    for split in ("val", "test"):
        path = target / split / "annotations.json"
        data = json.loads(path.read_text())
        kept = {image["id"] for image in data["images"][:EVAL_IMAGES]}
        data["images"] = [image for image in data["images"] if image["id"] in kept]
        data["annotations"] = [box for box in data["annotations"] if box["image_id"] in kept]
        path.write_text(json.dumps(data))
    (root / "catalog").mkdir()
    (root / "catalog" / "tiny.yaml").write_text(CATALOG)
    return SimpleNamespace(cache=cache, data_root=root / "data", catalog_dir=root / "catalog")


def context_in(results: Path, data):
    return quiet_context(results, data.cache, data_root=data.data_root, catalog_dir=data.catalog_dir)


def options(cluster: SlurmCluster) -> SlurmOptions:
    # No GPU request (the local cluster's GPUs are fake), one core per task so two run at once.
    return SlurmOptions(partition=cluster.partition, gpus_per_job=0, cpus_per_job=1, time_limit_min=10,
                        array_parallelism=2, poll_s=1.0)


def same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, NaN (undefined, e.g. no large objects) matching NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def job_of(attempt: str) -> str:
    """The SLURM job id in a line of the attempts log (``123_4`` for an array task)."""
    return re.search(r" job (\S+) ", attempt).group(1)


# ------------------------------------------------------------------------- one sweep, one array
@pytest.fixture(scope="module")
def sweep(slurm_cluster, tiny_data, tmp_path_factory):
    # The longest cell first: it starts at once, the other two share the second core.
    request = tiny_request(["bitfit", "zero-shot", "coop"], [DATASET], protocol_overrides=PROTOCOL,
                           method_options={"coop": FAILING_COOP})
    on_slurm = context_in(tmp_path_factory.mktemp("slurm-results"), tiny_data)
    cells = plan_cells(request, on_slurm)
    outcome = run_slurm(cells, on_slurm, options(slurm_cluster))
    here = context_in(tmp_path_factory.mktemp("local-results"), tiny_data)
    assert [c.key for c in plan_cells(request, here)] == [c.key for c in cells]
    local = run_local(cells, here)
    keys = {c.spec.method: c.key for c in cells}
    return SimpleNamespace(cells=cells, keys=keys, outcome=outcome, local=local, on_slurm=on_slurm, here=here)


@on_the_cluster
def test_every_cell_runs_as_a_task_of_one_array(sweep):
    store = sweep.on_slurm.store
    assert sorted(sweep.outcome.finished) == sorted([sweep.keys["zero-shot"], sweep.keys["bitfit"]])
    jobs = []
    for cell in sweep.cells:
        [attempt] = read_attempts(store, cell.key)  # one start each: nothing was requeued
        assert attempt.endswith("starts from scratch")
        jobs.append(job_of(attempt))
    arrays = {job.split("_")[0] for job in jobs}
    assert len(arrays) == 1 and sorted(job.split("_")[1] for job in jobs) == ["0", "1", "2"]
    logs = sweep.on_slurm.results / "slurm"
    [sweep_folder] = logs.iterdir()
    for job in jobs:  # submitit's logs of each task
        assert (sweep_folder / job / f"{job}_0_log.out").is_file()


@on_the_cluster
def test_a_failing_cell_is_reported_and_does_not_stop_the_others(sweep):
    key = sweep.keys["coop"]
    assert set(sweep.outcome.failed) == {key}
    assert "context_tokens=100" in sweep.outcome.failed[key]
    failure = sweep.on_slurm.store.failures()[key]
    assert failure["spec"]["method"] == "coop" and "Traceback" in failure["traceback"]
    assert not sweep.on_slurm.store.result_path(key).exists()
    assert sweep.local.failed.keys() == sweep.outcome.failed.keys()


@on_the_cluster
def test_the_records_equal_those_of_the_local_executor(sweep):
    """Training is deterministic on CPU: the same cell gives the same numbers in a SLURM task and here.

    Bitwise only with the same number of intra-op threads (with 1 instead of 2, BitFit's tensors
    differ by ~1e-6 after two steps): the local cluster binds no CPUs, so its tasks use as many
    threads as this process.
    """
    for key in sweep.outcome.finished:
        [attempt] = read_attempts(sweep.on_slurm.store, key)
        assert f"({torch.get_num_threads()} CPU threads," in attempt, (
            f"the task ran with another thread count than this process ({attempt}): its results may differ in the "
            "last bits, so this comparison needs a cluster that does not bind CPUs (scripts/local_slurm.sh)")
    slurm_records = {r.key: r for r in sweep.on_slurm.store.load_records()[0]}
    local_records = {r.key: r for r in sweep.here.store.load_records()[0]}
    assert slurm_records.keys() == local_records.keys() == set(sweep.local.finished) == set(sweep.outcome.finished)
    for key, a in local_records.items():
        b = slurm_records[key]
        assert b.spec == a.spec
        assert same_scores(b.val, a.val) and same_scores(b.test, a.test), (a.spec.method, a.test, b.test)
        assert b.best_step == a.best_step
        assert b.cost.train_steps == a.cost.train_steps
        assert b.cost.trainable_params == a.cost.trainable_params
        assert b.provenance["host"] and b.provenance["device"].startswith("cpu")
    key = sweep.keys["bitfit"]
    here = load_file(sweep.here.store.work_root / key / SELECTED_WEIGHTS)
    there = load_file(sweep.on_slurm.store.work_root / key / SELECTED_WEIGHTS)
    assert here.keys() == there.keys() and all(torch.equal(here[n], there[n]) for n in here)


@on_the_cluster
def test_packed_cells_run_in_one_task_and_equal_the_local_records(slurm_cluster, tiny_data, tmp_path, sweep):
    """--cells-per-task 2: both cells run one after another in one array task (one process, one
    model build) and give the records the local executor gave for the same keys."""
    request = tiny_request(["bitfit", "zero-shot"], [DATASET], protocol_overrides=PROTOCOL)
    on_slurm = context_in(tmp_path, tiny_data)
    cells = plan_cells(request, on_slurm)
    outcome = run_slurm(cells, on_slurm, SlurmOptions(**{**options(slurm_cluster).__dict__, "cells_per_task": 2}))
    assert sorted(outcome.finished) == sorted(c.key for c in cells) and not outcome.failed
    jobs = {job_of(attempt) for cell in cells for attempt in read_attempts(on_slurm.store, cell.key)}
    assert len(jobs) == 1  # one task (submitit submits a single task as a plain job, not an array)
    local = {r.key: r for r in sweep.here.store.load_records()[0]}
    for record in on_slurm.store.load_records()[0]:
        assert same_scores(record.val, local[record.key].val) and same_scores(record.test, local[record.key].test)


# ------------------------------------------------------------------------- interrupted tasks
def slurm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


def cancel(job: str) -> None:
    """``scancel`` a running task the way an admin would, without waiting out KillWait.

    scancel sends SIGTERM, which a submitit job ignores (it waits for the time-out signal), and
    SLURM kills the task only KillWait later (30 s on the local cluster): by then this test's short
    cell would have finished. So the task's processes are killed here, as SLURM would kill them; that
    needs the task to run on this machine, as on the local cluster.
    """
    raw_id = slurm("squeue", "-h", "-j", job, "-o", "%A").stdout.strip()
    listed = slurm("scontrol", "listpids", raw_id).stdout.splitlines()[1:]
    pids = [int(row.split()[0]) for row in listed if row.split()[2] != "batch"]
    assert pids, f"scontrol listpids {raw_id} shows no processes of task {job}: is the cluster's node this machine?"
    slurm("scancel", job)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def nudge_requeued(job: str) -> bool:
    """SLURM holds a requeued job for about two minutes (Reason=BeginTime); let it start in 2 s instead.

    Not at once: the node refuses to start a job in the same second that its credential was revoked
    by the requeue ("Job credential revoked"), and the task would end FAILED. True once nudged.
    """
    state = slurm("squeue", "-h", "-j", job, "-o", "%T %r").stdout.split()
    if state != ["PENDING", "BeginTime"]:
        return False
    slurm("scontrol", "update", f"JobId={job}", "StartTime=now+2")
    return True


@pytest.fixture(scope="module")
def interrupted(slurm_cluster, tiny_data, tmp_path_factory):
    context = context_in(tmp_path_factory.mktemp("slurm-interrupted"), tiny_data)
    request = tiny_request(["bitfit"], [DATASET], seeds=[0, 1], protocol_overrides=INTERRUPTED_PROTOCOL)
    preempted, cancelled = plan_cells(request, context)
    store = context.store
    result: dict = {}

    def sweep() -> None:
        try:
            result["outcome"] = run_slurm([preempted, cancelled], context, options(slurm_cluster))
        except BaseException as err:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = err

    runner = threading.Thread(target=sweep, daemon=True)
    runner.start()
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    signalled: dict[str, str] = {}
    nudged: set[str] = set()
    try:
        while runner.is_alive() and time.monotonic() < deadline:
            for cell in (preempted, cancelled):
                attempts = read_attempts(store, cell.key)
                if cell.key in signalled or not attempts or not (store.work_root / cell.key / CHECKPOINT).is_file():
                    continue
                job = signalled[cell.key] = job_of(attempts[0])
                if cell is preempted:  # the signal SLURM sends before a time-out: submitit checkpoints and requeues
                    slurm("scancel", "--signal=USR2", job)
                else:
                    cancel(job)
            for job in set(signalled.values()) - nudged:
                if nudge_requeued(job):
                    nudged.add(job)
            time.sleep(0.5)
        if runner.is_alive():
            pytest.fail(f"the interrupted sweep did not end within {SWEEP_TIMEOUT_S}s; attempts: "
                        f"{[read_attempts(store, c.key) for c in (preempted, cancelled)]}")
    finally:
        if runner.is_alive():  # leave no jobs behind
            started = [job_of(line) for c in (preempted, cancelled) for line in read_attempts(store, c.key)]
            for array in {job.split("_")[0] for job in started}:
                slurm("scancel", array)
    if "error" in result:
        raise result["error"]
    return SimpleNamespace(outcome=result["outcome"], store=store, preempted=preempted, cancelled=cancelled,
                           signalled=signalled)


@soaking_on_the_cluster
def test_interrupted_tasks_resume_from_their_checkpoints_and_finish(interrupted):
    outcome, store = interrupted.outcome, interrupted.store
    assert set(interrupted.signalled) == {interrupted.preempted.key, interrupted.cancelled.key}
    assert sorted(outcome.finished) == sorted([interrupted.preempted.key, interrupted.cancelled.key])
    assert outcome.failed == {}
    for cell in (interrupted.preempted, interrupted.cancelled):
        record = store.read_result(cell.key)
        assert record.cost.train_steps == INTERRUPTED_PROTOCOL["max_steps"]
        attempts = read_attempts(store, cell.key)
        assert len(attempts) == 2, attempts
        assert attempts[0].endswith("starts from scratch") and attempts[1].endswith("resumes from its checkpoint")
        assert not (store.work_root / cell.key / CHECKPOINT).exists()  # spent once the result is stored


@soaking_on_the_cluster
def test_a_preempted_task_is_requeued_as_the_same_array_task(interrupted):
    first, second = read_attempts(interrupted.store, interrupted.preempted.key)
    assert job_of(first) == job_of(second) == interrupted.signalled[interrupted.preempted.key]


@soaking_on_the_cluster
def test_a_cancelled_task_is_resubmitted_once_as_a_new_job(interrupted):
    first, second = read_attempts(interrupted.store, interrupted.cancelled.key)
    assert job_of(first) == interrupted.signalled[interrupted.cancelled.key]
    assert job_of(second).split("_")[0] != job_of(first).split("_")[0]


@soaking_on_the_cluster
def test_requeued_and_retried_cells_end_with_the_metrics_of_an_uninterrupted_run(interrupted, tiny_data, tmp_path):
    """SIGUSR2 (SLURM's warning before a time limit) after the first checkpoint, and a kill: both cells
    resume from their checkpoints and end bit for bit as the same cells run here without a break."""
    here = context_in(tmp_path, tiny_data)
    cells = [interrupted.preempted, interrupted.cancelled]
    assert run_local(cells, here).finished == [cell.key for cell in cells]
    for cell in cells:
        a, b = here.store.read_result(cell.key), interrupted.store.read_result(cell.key)
        assert same_scores(b.val, a.val) and same_scores(b.test, a.test) and b.best_step == a.best_step
        mine, theirs = (load_file(c.store.work_root / cell.key / SELECTED_WEIGHTS) for c in (here, interrupted))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)


@soaking_on_the_cluster
def test_the_launcher_says_which_cells_were_requeued_and_which_retried(interrupted):
    requeued = restarts_note(interrupted.preempted, interrupted.store, retried=False)
    retried = restarts_note(interrupted.cancelled, interrupted.store, retried=True)
    assert requeued.startswith(" (started 2 times: requeued by SLURM; attempts log ") and "retried" not in requeued
    assert retried.startswith(" (started 2 times: retried; attempts log ")


# ------------------------------------------------------------------------- cluster errors
@pytest.mark.slurm
def test_the_cli_reports_an_unknown_partition(slurm_cluster, tiny_data, tmp_path, capsys):
    args = ["--executor", "slurm", "--partition", "no-such-partition", "--gpus-per-job", "0",
            "--methods", "zero-shot", "--datasets", DATASET, "--protocol", "shapes", "--no-progress",
            "--results", str(tmp_path / "results"), "--cache-dir", str(tiny_data.cache),
            "--data-root", str(tiny_data.data_root), "--catalog", str(tiny_data.catalog_dir)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "partition 'no-such-partition' does not exist" in error and slurm_cluster.partition in error
    assert not (tmp_path / "results" / "runs" / "done").exists()


def test_missing_sbatch_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    context = context_in(tmp_path / "results", tiny_data)
    cells = plan_cells(tiny_request(["zero-shot"], [DATASET]), context)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BenchError, match="sbatch was not found.*--executor local"):
        run_slurm(cells, context, SlurmOptions())


def test_an_unreachable_controller_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    if shutil.which("sinfo") is None:
        pytest.skip("needs the SLURM client tools")
    conf = ["ClusterName=nowhere", "SlurmctldHost=localhost(127.0.0.1)", "SlurmctldPort=1", "MessageTimeout=1", "TCPTimeout=1"]
    (tmp_path / "slurm.conf").write_text("\n".join(conf) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    context = context_in(tmp_path / "results", tiny_data)
    cells = plan_cells(tiny_request(["zero-shot"], [DATASET]), context)
    with pytest.raises(BenchError, match="controller is not reachable.*SLURM_CONF.*--executor local"):
        run_slurm(cells, context, SlurmOptions())


# ------------------------------------------------------------------------- data parallel in a job
@on_the_cluster
def test_two_processes_of_one_task_train_a_cell_together(slurm_cluster, tiny_data, tmp_path):
    """``processes_per_job=2``: one array task of two SLURM tasks, which join a gloo process group
    through submitit's distributed environment; both log their start, rank 0 stores the record."""
    request = tiny_request(["bitfit"], [DATASET], protocol_overrides=PROTOCOL)
    context = context_in(tmp_path / "results", tiny_data)
    [cell] = plan_cells(request, context)
    parallel = SlurmOptions(partition=slurm_cluster.partition, gpus_per_job=0, processes_per_job=2, cpus_per_job=1,
                            time_limit_min=10, array_parallelism=1, poll_s=1.0)
    outcome = run_slurm([cell], context, parallel)
    assert outcome.finished == [cell.key] and not outcome.failed
    attempts = read_attempts(context.store, cell.key)
    assert len({job_of(a) for a in attempts}) == 1  # two processes of the same task, ranks 0 and 1 of 2
    assert sorted(re.search(r"process (\d of \d)", a).group(1) for a in attempts) == ["0 of 2", "1 of 2"]
    [record] = context.store.load_records()[0]
    assert record.cost.train_steps == PROTOCOL["max_steps"] and record.best_step == PROTOCOL["max_steps"]
