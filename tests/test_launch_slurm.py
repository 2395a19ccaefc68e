"""The SLURM executor end to end, on a real cluster (e.g. ``scripts/local_slurm.sh start DIR``).

Skipped, with the reason, when no controller is reachable; failed instead with BENCH_REQUIRE_SLURM=1
(see ``tests/slurm_support.py``). Every cell runs ``glip-nano`` (random weights) on a copy of
shapes-colours whose val and test splits are cut to a few images, because on CPU evaluation is most
of a cell's time.

- One sweep (zero-shot, BitFit, and a CoOp configuration that fails inside the job) runs as one job
  array; its records equal those of the same sweep run by the local executor, the failing cell is
  reported and does not stop the others.
- A second sweep of two BitFit cells is interrupted mid-training: one task gets the time-out /
  preemption signal (submitit checkpoints and requeues it), the other is cancelled (the retry
  round resubmits it). Both end with a result and resumed from their checkpoints.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from bench.errors import BenchError
from bench.launch.local import run_local
from bench.launch.slurm import SlurmOptions, read_attempts, run_slurm
from bench.runs.plan import plan_cells
from bench.train.checkpoint import CHECKPOINT
from bench.train.loop import BEST_WEIGHTS
from tests.run_support import quiet_context, synthetic_cache, tiny_request
from tests.slurm_support import SlurmCluster, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DATASET = "tiny-colours"
EVAL_IMAGES = 4
PROTOCOL = {"max_steps": 4, "eval_every": 2, "batch_size": 2, "checkpoint_every": 1}
INTERRUPTED_PROTOCOL = {"max_steps": 6, "eval_every": 6, "batch_size": 2, "checkpoint_every": 1}
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
    request = tiny_request(["zero-shot", "bitfit", "coop"], [DATASET], protocol_overrides=PROTOCOL,
                           method_options={"coop": FAILING_COOP})
    on_slurm = context_in(tmp_path_factory.mktemp("slurm-results"), tiny_data)
    cells = plan_cells(request, on_slurm)
    tick = time.perf_counter()
    outcome = run_slurm(cells, on_slurm, options(slurm_cluster))
    slurm_s = time.perf_counter() - tick
    here = context_in(tmp_path_factory.mktemp("local-results"), tiny_data)
    assert [c.key for c in plan_cells(request, here)] == [c.key for c in cells]
    local = run_local(cells, here)
    keys = {c.spec.method: c.key for c in cells}
    return SimpleNamespace(cells=cells, keys=keys, outcome=outcome, local=local, on_slurm=on_slurm, here=here,
                           slurm_s=slurm_s)


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
    assert sorted(p.name for p in sweep_folder.iterdir() if p.is_dir()) == sorted(jobs)


def test_a_failing_cell_is_reported_and_does_not_stop_the_others(sweep):
    key = sweep.keys["coop"]
    assert set(sweep.outcome.failed) == {key}
    assert "context_tokens=100" in sweep.outcome.failed[key]
    failure = sweep.on_slurm.store.failures()[key]
    assert failure["spec"]["method"] == "coop" and "Traceback" in failure["traceback"]
    assert not sweep.on_slurm.store.result_path(key).exists()
    assert sweep.local.failed.keys() == sweep.outcome.failed.keys()


def test_the_records_equal_those_of_the_local_executor(sweep):
    """Training is deterministic on CPU: the same cell gives the same numbers in a SLURM task and here."""
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
    here = load_file(sweep.here.store.work_root / key / BEST_WEIGHTS)
    there = load_file(sweep.on_slurm.store.work_root / key / BEST_WEIGHTS)
    assert here.keys() == there.keys() and all(torch.equal(here[n], there[n]) for n in here)


# ------------------------------------------------------------------------- interrupted tasks
def slurm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


def nudge_requeued(job: str) -> None:
    """SLURM holds a requeued job for about two minutes (Reason=BeginTime); let it start now."""
    state = slurm("squeue", "-h", "-j", job, "-o", "%T %r").stdout.split()
    if state == ["PENDING", "BeginTime"]:
        slurm("scontrol", "update", f"JobId={job}", "StartTime=now")


@pytest.fixture(scope="module")
def interrupted(slurm_cluster, tiny_data, tmp_path_factory):
    context = context_in(tmp_path_factory.mktemp("slurm-interrupted"), tiny_data)
    preempted, cancelled = plan_cells(tiny_request(["bitfit"], [DATASET], seeds=[0, 1], protocol_overrides=INTERRUPTED_PROTOCOL),
                                      context)
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
    while runner.is_alive() and time.monotonic() < deadline:
        for cell, action in ((preempted, "preempt"), (cancelled, "cancel")):
            attempts = read_attempts(store, cell.key)
            if cell.key not in signalled and attempts and (store.work_root / cell.key / CHECKPOINT).is_file():
                job = job_of(attempts[0])
                # The signal SLURM sends before a time-out (--signal=USR2@90): submitit checkpoints and requeues.
                slurm("scancel", "--signal=USR2", job) if action == "preempt" else slurm("scancel", job)
                signalled[cell.key] = job
        for job in signalled.values():
            nudge_requeued(job)
        time.sleep(0.5)
    if runner.is_alive():
        for job in signalled.values():
            slurm("scancel", job.split("_")[0])
        pytest.fail(f"the interrupted sweep did not end within {SWEEP_TIMEOUT_S}s; attempts: "
                    f"{[read_attempts(store, c.key) for c in (preempted, cancelled)]}")
    if "error" in result:
        raise result["error"]
    return SimpleNamespace(outcome=result["outcome"], store=store, preempted=preempted, cancelled=cancelled,
                           signalled=signalled)


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


def test_a_preempted_task_is_requeued_as_the_same_array_task(interrupted):
    first, second = read_attempts(interrupted.store, interrupted.preempted.key)
    assert job_of(first) == job_of(second) == interrupted.signalled[interrupted.preempted.key]


def test_a_cancelled_task_is_resubmitted_once_as_a_new_job(interrupted):
    first, second = read_attempts(interrupted.store, interrupted.cancelled.key)
    assert job_of(first) == interrupted.signalled[interrupted.cancelled.key]
    assert job_of(second).split("_")[0] != job_of(first).split("_")[0]


# ------------------------------------------------------------------------- cluster errors
def test_an_unknown_partition_is_a_clear_error(slurm_cluster, tiny_data, tmp_path):
    context = context_in(tmp_path / "results", tiny_data)
    cells = plan_cells(tiny_request(["zero-shot"], [DATASET]), context)
    bad = SlurmOptions(partition="no-such-partition", gpus_per_job=0)
    with pytest.raises(BenchError, match="partition 'no-such-partition' does not exist.*--partition"):
        run_slurm(cells, context, bad)


def test_missing_sbatch_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    context = context_in(tmp_path / "results", tiny_data)
    cells = plan_cells(tiny_request(["zero-shot"], [DATASET]), context)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BenchError, match="sbatch was not found.*--executor local"):
        run_slurm(cells, context, SlurmOptions())


def test_an_unreachable_controller_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    if shutil.which("sinfo") is None:
        pytest.skip("needs the SLURM client tools")
    (tmp_path / "slurm.conf").write_text("ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\nMessageTimeout=1\nTCPTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    context = context_in(tmp_path / "results", tiny_data)
    cells = plan_cells(tiny_request(["zero-shot"], [DATASET]), context)
    with pytest.raises(BenchError, match="controller is not reachable.*SLURM_CONF.*--executor local"):
        run_slurm(cells, context, SlurmOptions())
