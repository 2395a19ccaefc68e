"""Helpers and the ``slurm_cluster`` fixture for tests that need a real SLURM controller.

A cluster on this machine: ``scripts/local_slurm.sh start DIR`` (as root), then
``export SLURM_CONF=DIR/slurm.conf`` before running pytest. Without a reachable controller the
tests that use ``slurm_cluster`` are skipped with the reason from :func:`slurm_available`;
with ``BENCH_REQUIRE_SLURM=1`` in the environment they fail instead (for CI, so that a cluster
that did not come up cannot turn into silently skipped tests).

Tests import the fixture from here: ``from tests.slurm_support import slurm_cluster``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_SLURM_SCRIPT = REPO_ROOT / "scripts" / "local_slurm.sh"
START_HINT = (
    "start one with scripts/local_slurm.sh start DIR and export SLURM_CONF=DIR/slurm.conf"
)
REQUIRE_ENV = "BENCH_REQUIRE_SLURM"

#: Job states after which a job will not run any more (squeue/scontrol spelling).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


def _run(args: list[str], timeout: float = 10.0, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def slurm_available(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether a SLURM controller answers with the current environment (``SLURM_CONF`` if set).

    Returns ``(True, "")``, or ``(False, reason)`` where reason says what is missing and how to
    start a local cluster.
    """
    missing = [tool for tool in ("sbatch", "sinfo", "squeue", "scontrol") if not shutil.which(tool)]
    if missing:
        return False, (
            f"SLURM client tools not found on PATH ({', '.join(missing)}): install them with "
            "apt-get install slurm-client (scripts/local_slurm.sh names all the packages), then "
            + START_HINT
        )
    conf = os.environ.get("SLURM_CONF")
    where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset"
    if not conf and not Path("/etc/slurm/slurm.conf").is_file():
        where += ", no /etc/slurm/slurm.conf"
    if conf and not Path(conf).is_file():
        return False, f"no SLURM controller reachable: {where} does not exist; {START_HINT}"
    try:
        proc = _run(["sinfo", "-h", "-o", "%P"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, (
            f"no SLURM controller reachable: sinfo did not answer within {timeout:g}s ({where}); "
            + START_HINT
        )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        return False, f"no SLURM controller reachable: sinfo failed: {detail} ({where}); {START_HINT}"
    if not proc.stdout.strip():
        return False, f"SLURM controller at {where} has no partitions; {START_HINT}"
    return True, ""


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the reachable cluster."""

    partition: str  # the default partition (or the first one)
    gpus: int  # GPUs (gres gpu) of the node with the most
    accounting: bool  # whether sacct works (slurmdbd), so submitit sees real job states
    conf: str | None  # SLURM_CONF, if set


def describe_cluster() -> SlurmCluster:
    partitions = _run(["sinfo", "-h", "-o", "%P"]).stdout.split()
    default = [p.rstrip("*") for p in partitions if p.endswith("*")]
    partition = default[0] if default else partitions[0].rstrip("*")
    gpus = 0
    for gres in _run(["sinfo", "-h", "-N", "-o", "%G"]).stdout.split():
        counts = re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres)
        gpus = max(gpus, sum(int(c) for c in counts))
    config = _run(["scontrol", "show", "config"]).stdout
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config, re.MULTILINE)
    accounting = bool(match) and match.group(1) != "accounting_storage/none"
    return SlurmCluster(partition, gpus, accounting, os.environ.get("SLURM_CONF"))


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The reachable SLURM cluster; skips the test when there is none (fails if
    BENCH_REQUIRE_SLURM=1)."""
    ok, reason = slurm_available()
    if not ok:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return describe_cluster()


# --- plain sbatch helpers ---------------------------------------------------------------------


def sbatch(args: list[str], env: dict[str, str] | None = None) -> str:
    """Submits with ``sbatch --parsable ARGS`` and returns the job id."""
    proc = _run(["sbatch", "--parsable", *args], timeout=30, env=env)
    assert proc.returncode == 0, f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}"
    return proc.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """JobState from ``scontrol show job`` (None once the controller has forgotten the job)."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    match = re.search(r"\bJobState=(\S+)", proc.stdout)
    return match.group(1) if match else None


def wait_for_job(job_id: str, timeout: float = 30.0, poll: float = 0.2) -> str:
    """Waits until the job has left the queue; returns its final state (e.g. ``COMPLETED``).

    On timeout the job is cancelled and the test fails with what the controller knows.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = _run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip()
        state = job_state(job_id)
        if not queued and (state is None or state in FINAL_STATES):
            return state or "GONE"
        time.sleep(poll)
    info = _run(["scontrol", "show", "job", job_id]).stdout
    _run(["scancel", job_id])
    pytest.fail(f"SLURM job {job_id} did not finish within {timeout:g}s:\n{info}")


# --- a function for submitit jobs -------------------------------------------------------------


def import_root(func) -> Path:
    """The sys.path entry from which a job can import ``func`` by its module name (submitit
    pickles module-level functions by reference, and the job's sys.path is not pytest's)."""
    module = sys.modules[func.__module__]
    return Path(module.__file__).resolve().parents[func.__module__.count(".")]


def add_and_report(a: int, b: int, out_dir: str) -> dict[str, object]:
    """Runs inside a SLURM job: adds, leaves a file in out_dir, reports where it ran."""
    total = a + b
    Path(out_dir, "sum.txt").write_text(f"{total}\n")
    return {
        "sum": total,
        "executable": sys.executable,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "cwd": os.getcwd(),
    }
