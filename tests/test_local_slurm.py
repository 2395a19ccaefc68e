"""End-to-end checks against a real SLURM controller, e.g. the single-node cluster that
``scripts/local_slurm.sh start DIR`` starts (with ``SLURM_CONF=DIR/slurm.conf`` exported).

Skipped, with the reason, when no controller is reachable (see ``tests/slurm_support.py``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_support import (  # noqa: F401  (slurm_cluster is a fixture)
    SlurmCluster,
    add_and_report,
    import_root,
    sbatch,
    slurm_cluster,
    wait_for_job,
)

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 30


def test_sbatch_wrap_job_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = sbatch(
        [
            f"--partition={slurm_cluster.partition}",
            "--job-name=bench-smoke",
            "--time=1",
            "--ntasks=1",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/slurm-%j.out",
            "--wrap",
            'echo "$SLURM_JOB_ID" > job_id.txt',
        ]
    )
    state = wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    log = tmp_path / f"slurm-{job_id}.out"
    assert state in ("COMPLETED", "GONE"), f"job {job_id} ended {state}; log: {log}"
    assert (tmp_path / "job_id.txt").read_text().strip() == job_id


def test_gpu_gres_job_gets_cuda_visible_devices(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    if slurm_cluster.gpus < 1:
        pytest.skip(
            "the cluster declares no gpu gres (scripts/local_slurm.sh declares fake GPUs "
            "unless started with --gpus 0)"
        )
    # Our own CUDA_VISIBLE_DEVICES (on a GPU machine) must not leak into the job via sbatch's
    # default --export=ALL: the value has to come from SLURM's gres allocation.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    job_id = sbatch(
        [
            f"--partition={slurm_cluster.partition}",
            "--job-name=bench-gpu",
            "--time=1",
            "--gres=gpu:1",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/slurm-%j.out",
            "--wrap",
            'echo "${CUDA_VISIBLE_DEVICES-unset}" > cvd.txt',
        ],
        env=env,
    )
    state = wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert state in ("COMPLETED", "GONE"), f"job {job_id} ended {state}"
    cvd = (tmp_path / "cvd.txt").read_text().strip()
    assert re.fullmatch(r"\d+", cvd), f"expected one GPU index, got CUDA_VISIBLE_DEVICES={cvd!r}"
    assert int(cvd) < slurm_cluster.gpus


def _submitit_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition,
        timeout_min=1,
        name="bench-submitit",
        # The job unpickles add_and_report by reference (tests.slurm_support.add_and_report), so
        # it must be able to import the tests package, whatever directory pytest ran from.
        slurm_setup=[
            f"export PYTHONPATH={import_root(add_and_report)}${{PYTHONPATH:+:$PYTHONPATH}}"
        ],
    )
    assert executor.cluster == "slurm"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = executor.submit(add_and_report, 2, 3, str(out_dir))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"submitit job {job.job_id} not done within {JOB_TIMEOUT_S}s; "
                f"stdout: {job.stdout()!r}; stderr: {job.stderr()!r}"
            )
        time.sleep(0.5)
    return job, out_dir


def test_submitit_runs_python_function(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job, out_dir = _submitit_job(slurm_cluster, tmp_path)
    result = job.result()
    assert result["sum"] == 5
    assert result["job_id"] == job.job_id
    # submitit runs the job with the submitting interpreter (here: the venv's python).
    assert result["executable"] == sys.executable
    # The job sees the test's tmp_path (same machine, same file system).
    assert (out_dir / "sum.txt").read_text().strip() == "5"


def test_submitit_sees_final_state_with_accounting(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    if not slurm_cluster.accounting:
        pytest.skip(
            "SLURM accounting is off, so submitit reads job states as UNKNOWN "
            "(scripts/local_slurm.sh start DIR --with-dbd enables it)"
        )
    job, _ = _submitit_job(slurm_cluster, tmp_path)
    assert job.result()["sum"] == 5
    # sacct can lag the end of the job by a moment.
    deadline = time.monotonic() + 15
    while job.watcher.get_state(job.job_id, mode="force") != "COMPLETED":
        if time.monotonic() > deadline:
            pytest.fail(f"sacct state of job {job.job_id}: {job.state}")
        time.sleep(0.5)
