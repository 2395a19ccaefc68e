"""The SLURM executor: the missing cells of a sweep as one job array, submitted with submitit.

Each array task runs one cell, or ``cells_per_task`` cells one after another (:class:`CellTask`),
with the same code as the local executor, so its only output is each cell's record in the run store
(or its failure file). Cells packed into one task share its process: the base detector is built and
loaded once (:mod:`bench.runs.warm`), and frozen-part outputs stay in its memory cache. The launcher never trusts
what a job returns: when every task has ended it reads the store, and a cell counts as finished
exactly when its result file is there.

Interruptions. Before a task hits its time limit (or is preempted) SLURM sends it a signal;
submitit then calls :meth:`CellTask.checkpoint`, which hands back the same task, and requeues it.
The requeued task resumes from the last checkpoint the training loop wrote in the cell's work
folder (``run_cell`` always resumes), up to submitit's limit of 3 time-outs. A task that is
cancelled (``scancel``) or killed from outside is not requeued by SLURM: after the array has
ended, the cells that neither finished nor recorded an error are submitted once more, as a second
job array (one retry round, no more), and resume from their checkpoints. What still has no result after
that is reported as failed, with the reason from its failure file, or else from the job: its
SLURM state (CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...), the exception submitit recorded, or the last
line of its stderr.

Logs of every task are under ``<results>/slurm/<sweep stamp>/<job id>_<task>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.launch import EXECUTORS
from bench.launch.base import (ATTEMPTS_LOG, SweepOutcome, cell_label, finished_line, read_attempts,
                               run_cell_recording_failure)
from bench.options import key_value_argument
from bench.runs.lease import Leases, Owner
from bench.runs.plan import Cell, RunContext
from bench.runs.store import RunStore

RETRY_ROUNDS = 1
VISIBILITY_GRACE_S = 30.0
"""How long to wait for a store file that a task reported writing (shared file systems may show a
new file to other hosts some seconds late)."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks SLURM for. ``gpus_per_job`` 0 requests no GPU (CPU-only clusters);
    ``processes_per_job``: data-parallel processes training the cell together (None: one per GPU;
    on CPU they use gloo), each with ``cpus_per_job`` CPUs; ``extra`` holds further sbatch options
    by name (``{"account": "proj", "qos": "high"}``); ``poll_s`` is how often the launcher looks
    at the queue while it waits; ``cells_per_task``: cells run one after another by each array task
    (its time limit must cover them all)."""

    partition: str | None = None
    gpus_per_job: int = 1
    processes_per_job: int | None = None
    cpus_per_job: int = 4
    time_limit_min: int = 240
    array_parallelism: int = 32
    extra: Mapping[str, Any] = field(default_factory=dict)
    poll_s: float = 15.0
    cells_per_task: int = 1


class CellTask:
    """One array task: run its ``cells`` one after another and record each result or failure in the store.

    submitit pickles this object into the job folder. On preemption or time-out it calls
    :meth:`checkpoint`, which hands back the task with the cells it has already settled: the training
    state needs no saving here, because the loop checkpoints into the cell's work folder as it goes
    and ``run_cell`` resumes from there, and the requeued task goes on with the first cell it has not
    settled.
    """

    def __init__(self, cells: Sequence[Cell], context: RunContext) -> None:
        self.cells = list(cells)
        self.context = context
        self.settled: set[str] = set()  # keys this task finished or recorded a failure for

    def __call__(self) -> str | None:
        """The error texts of failed cells, or None; for the job's log only (the store is the truth).

        With several tasks per job (``--gpus-per-job`` above 1: one process per GPU), the tasks
        export the ``torch.distributed`` variables from submitit's job environment and train each cell
        together (:mod:`bench.train.distributed`); LOCAL_RANK picks each one's GPU.
        """
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        errors = []
        for cell in self.cells:
            if cell.key in self.settled:
                continue
            result = run_cell_recording_failure(cell, self.context)
            self.settled.add(cell.key)
            if isinstance(result, tuple):
                errors.append(f"{cell_label(cell)}: {result[0]}")
        return "; ".join(errors) or None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def packed(cells: Sequence[Cell], per_task: int) -> list[list[Cell]]:
    """``cells`` in consecutive groups of ``per_task``, one group per array task (a sweep's cells
    come method by method, so a group mostly shares one method and dataset)."""
    return [list(cells[i:i + per_task]) for i in range(0, len(cells), per_task)]


# ------------------------------------------------------------------------------------ the cluster
def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def check_cluster(partition: str | None) -> None:
    """Fail early, and say how to fix it, when this machine cannot submit to a SLURM cluster."""
    for tool in ("sbatch", "srun", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            raise BenchError(
                f"{tool} was not found: the SLURM executor submits with the SLURM client tools (sbatch, srun, squeue, "
                "sinfo). Install the SLURM client (e.g. apt-get install slurm-client) and run from a machine that can "
                "submit jobs, or use --executor local."
            )
    where = f"SLURM_CONF={os.environ['SLURM_CONF']}" if os.environ.get("SLURM_CONF") else "SLURM_CONF is not set"
    try:
        proc = _run(["sinfo", "-h", "-o", "%P"])
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"The SLURM controller did not answer sinfo within 30 s ({where}). Check that the cluster is up and that "
            "SLURM_CONF names its slurm.conf, or use --executor local."
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BenchError(
            f"The SLURM controller is not reachable: sinfo failed with '{detail}' ({where}). Check that the cluster "
            "is up and that SLURM_CONF names its slurm.conf, or use --executor local."
        )
    partitions = [name.rstrip("*") for name in proc.stdout.split()]
    if partition is not None and partition not in partitions:
        raise BenchError(
            f"The SLURM partition {partition!r} does not exist; this cluster has: {', '.join(partitions) or 'none'}. "
            "Choose one with --partition (or leave it out for the default partition)."
        )


def _queued_tasks(job_ids: Sequence[str]) -> set[str] | None:
    """Ids (``123_4``) of the array tasks still pending or running, or None when squeue did not answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        proc = _run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i"])
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        # squeue refuses ids the controller has already forgotten: then nothing of them is queued
        return set() if "Invalid job id" in proc.stderr else None
    return set(proc.stdout.split())


def _executor(folder: Path, options: SlurmOptions, name: str):
    import submitit

    import bench

    # The job unpickles CellTask and the cells by reference: it must import bench (and methods)
    # whatever directory it starts in, also from a checkout that is not installed.
    source_root = Path(bench.__file__).resolve().parents[1]
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    parameters: dict[str, Any] = dict(
        name=name,
        timeout_min=options.time_limit_min,
        cpus_per_task=options.cpus_per_job,
        slurm_array_parallelism=options.array_parallelism,
        slurm_additional_parameters=dict(options.extra),
        slurm_setup=[f"export PYTHONPATH={shlex.quote(str(source_root))}${{PYTHONPATH:+:$PYTHONPATH}}"],
    )
    if options.partition is not None:
        parameters["slurm_partition"] = options.partition
    if options.gpus_per_job > 0:  # 0: no GPU request at all (a --gpus-per-node=0 line fails on clusters without gres)
        parameters["gpus_per_node"] = options.gpus_per_job
    processes = options.processes_per_job or max(options.gpus_per_job, 1)
    if processes > 1:  # data parallel inside the job: one task per process (per GPU), cpus_per_job each
        parameters["tasks_per_node"] = processes
    try:
        executor.update_parameters(**parameters)
    except ValueError as err:
        raise BenchError(f"submitit rejected the SLURM options {parameters}: {err}") from None
    return executor


# ------------------------------------------------------------------------------------ one round
def _stamps(paths: Mapping[str, Path]) -> dict[str, int]:
    """Modification times of those of ``paths`` that exist now (to tell this round's files from older ones)."""
    stamps = {}
    for key, path in paths.items():
        try:
            stamps[key] = path.stat().st_mtime_ns
        except OSError:
            pass
    return stamps


@dataclass(frozen=True)
class _Before:
    """The store files of a round's cells as they were when the round was submitted."""

    results: Mapping[str, int]
    failures: Mapping[str, int]

    @classmethod
    def take(cls, store: RunStore, cells: Sequence[Cell]) -> "_Before":
        return cls(_stamps({c.key: store.result_path(c.key) for c in cells}),
                   _stamps({c.key: store.failure_path(c.key) for c in cells}))


def _is_new(path: Path, key: str, before: Mapping[str, int]) -> bool:
    try:
        return path.stat().st_mtime_ns != before.get(key)
    except OSError:
        return False


def _new_result(store: RunStore, key: str, before: _Before) -> bool:
    """Whether this round stored a readable result for ``key`` (a result kept from an earlier sweep,
    e.g. under --force, does not count)."""
    return _is_new(store.result_path(key), key, before.results) and bool(store.readable_results([key]))


def _new_failure(store: RunStore, key: str, before: _Before) -> tuple[str, bool] | None:
    """The error this round recorded for ``key`` and whether a rerun may get past it, or None."""
    path = store.failure_path(key)
    if not _is_new(path, key, before.failures):
        return None
    try:
        failure = json.loads(path.read_text())
        return failure["error"], bool(failure.get("transient", False))
    except (OSError, ValueError, KeyError, TypeError):
        return f"the failure file {path} cannot be read", False


def _job_outcome(job) -> tuple[str | None, str]:
    """("success" / "error" / None without a result file, text) from what submitit wrote for ``job``."""
    import submitit

    if not job.paths.result_pickle.exists():
        return None, ""
    try:
        outcome, value = submitit.core.utils.pickle_load(job.paths.result_pickle)
    except Exception as err:  # noqa: BLE001 (an unreadable result file is reported, not raised)
        return "error", f"unreadable submitit result {job.paths.result_pickle}: {err}"
    return outcome, value if isinstance(value, str) else ""


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _job_reason(job) -> str:
    """Why ``job`` ended without a result: its SLURM state, its exception, or its stderr."""
    outcome, text = _job_outcome(job)
    if outcome == "error":
        return f"SLURM task {job.job_id} raised {_last_line(text) or 'an error'} (log: {job.paths.stderr})"
    try:
        state = job.watcher.get_state(job.job_id, mode="force")
    except Exception:  # noqa: BLE001 (sacct trouble must not hide the other results)
        state = "UNKNOWN"
    state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> "CANCELLED"
    if state in ("UNKNOWN", "COMPLETED"):
        detail = _last_line(job.stderr())
        return f"SLURM task {job.job_id} ended without a result{f': {detail}' if detail else ''} (log: {job.paths.stderr})"
    return f"SLURM task {job.job_id} ended {state} without a result (log: {job.paths.stderr})"


def _submit(executor, tasks: Sequence[Sequence[Cell]], context: RunContext) -> list:
    import submitit

    cells = [cell for task in tasks for cell in task]
    try:
        with executor.batch():
            jobs = [executor.submit(CellTask(task, context)) for task in tasks]
    except submitit.core.utils.FailedJobError as err:
        raise BenchError(
            f"sbatch refused the job array of {len(cells)} cell(s): {_last_line(str(err)) or err}. Check --partition, "
            "--gpus-per-job, --cpus-per-job, --time-limit and the --sbatch options against the cluster (sinfo shows its "
            "partitions; a sweep larger than MaxArraySize in `scontrol show config` must be run in parts)."
        ) from None
    return jobs


def _wait(jobs: Sequence, options: SlurmOptions, progress: bool) -> None:
    """Return when every task has left the queue (or written its submitit result)."""
    pending = {job.job_id: job for job in jobs}
    warned = False
    with tqdm(total=len(jobs), desc="slurm", unit="task", disable=not progress) as bar:
        while pending:
            queued = _queued_tasks(list(pending))
            if queued is None and not warned:
                print("squeue does not answer; waiting for the tasks' result files meanwhile.", file=sys.stderr)
                warned = True
            for job_id, job in list(pending.items()):
                if job.paths.result_pickle.exists() or (queued is not None and job_id not in queued):
                    del pending[job_id]
                    bar.update(1)
            if pending:
                time.sleep(options.poll_s)


def _settle(tasks: Sequence[Sequence[Cell]], jobs: Sequence, store: RunStore,
            before: _Before) -> tuple[SweepOutcome, dict[str, str]]:
    """Finished and failed cells of one round, and the cells to retry (killed from outside) with why."""
    outcome, retry = SweepOutcome(), {}
    leases = Leases(store.leases_dir)
    for cell, job in ((cell, job) for task, job in zip(tasks, jobs) for cell in task):
        finished = _new_result(store, cell.key, before)
        failure = _new_failure(store, cell.key, before)
        job_outcome, _ = _job_outcome(job)
        holder = leases.running([cell.key]).get(cell.key)
        if not finished and failure is None and holder is not None and holder.slurm_task != job.job_id:
            outcome.leased[cell.key] = holder.describe()  # its task found it run by another owner and left it
            continue
        if not finished and failure is None and job_outcome == "success":
            # The task stored its result or failure: give a shared file system time to show the file.
            deadline = time.monotonic() + VISIBILITY_GRACE_S
            while not finished and failure is None and time.monotonic() < deadline:
                time.sleep(1.0)
                finished = _new_result(store, cell.key, before)
                failure = _new_failure(store, cell.key, before)
        if finished:
            outcome.finished.append(cell.key)
        elif failure is not None:
            outcome.failed[cell.key], transient = failure
            if transient:
                outcome.transient.add(cell.key)
        elif job_outcome is None:  # cancelled or killed: it may resume from its checkpoint
            retry[cell.key] = _job_reason(job)
        else:  # the task raised outside the cell (e.g. it could not import the project): rerunning repeats it
            outcome.failed[cell.key] = _job_reason(job)
    return outcome, retry


def _job_context(context: RunContext) -> RunContext:
    """``context`` as the job sees it: absolute paths (the job may start elsewhere), no progress bars."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(path).expanduser().resolve()

    return dataclasses.replace(
        context, results=absolute(context.results), data_root=absolute(context.data_root),
        cache_dir=absolute(context.cache_dir), catalog_dir=absolute(context.catalog_dir), progress=False,
    )


def run_slurm(cells: Sequence[Cell], context: RunContext, options: SlurmOptions) -> SweepOutcome:
    """Run ``cells`` as one SLURM job array and wait for it; read the outcome from the run store.

    Cells whose task was cancelled or killed without recording an error are submitted once more
    (one retry round), resuming from their checkpoints; see the module docstring.
    """
    if not cells:
        return SweepOutcome()
    check_cluster(options.partition)
    job_context = _job_context(context)
    store = job_context.store
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = job_context.results / "slurm" / stamp
    executor = _executor(folder, options, f"bench-{stamp}")
    print(f"SLURM logs of this sweep: {folder}")

    outcome, todo, reasons, retried = SweepOutcome(), list(cells), {}, set()
    for round_ in range(1 + RETRY_ROUNDS):
        before = _Before.take(store, todo)
        tasks = packed(todo, options.cells_per_task)
        jobs = _submit(executor, tasks, job_context)
        leases = Leases(store.leases_dir)
        for task, job in zip(tasks, jobs):  # a rerun before the tasks start sees them as running, not to do
            for cell in task:
                leases.write_queued(cell.key, Owner.queued_task(job.job_id))
        arrays = sorted({job.job_id.split("_")[0] for job in jobs})
        what = "Resubmitted" if round_ else "Submitted"
        packing = f" in {len(jobs)} task(s) of up to {options.cells_per_task} cells" if options.cells_per_task > 1 else ""
        print(f"{what} {len(todo)} cell(s){packing} as SLURM job {', '.join(arrays)} "
              f"(at most {min(len(jobs), options.array_parallelism)} tasks at once); logs in {folder}/{arrays[0]}*")
        try:
            _wait(jobs, options, context.progress)
        except KeyboardInterrupt:
            print(f"Stopped waiting. SLURM job {', '.join(arrays)} keeps running and stores its results; "
                  f"`scancel {' '.join(arrays)}` stops it. Its cells hold leases: running this sweep again shows them "
                  "as running and submits only the others; `run_bench.py report` tabulates what has finished.",
                  file=sys.stderr)
            raise
        settled, retry = _settle(tasks, jobs, store, before)
        outcome = outcome.merge(settled)
        reasons.update(retry)
        todo = [cell for cell in todo if cell.key in retry]
        if not todo:
            break
        if round_ < RETRY_ROUNDS:
            retried.update(cell.key for cell in todo)
            print(f"{len(todo)} cell(s) ended without a result or an error (cancelled or killed); submitting them once "
                  "more to resume from their checkpoints:\n" + "\n".join(f"  {cell_label(cell)}: {retry[cell.key]}"
                                                                      for cell in todo))
    for cell in todo:  # killed or cancelled twice: still resumable from its checkpoint
        outcome.failed[cell.key] = reasons[cell.key]
        outcome.transient.add(cell.key)
    for cell in cells:
        if cell.key in outcome.finished:
            print(finished_line(cell, store) + restarts_note(cell, store, cell.key in retried))
        elif cell.key in outcome.failed:
            resumable = " (a rerun resumes it)" if cell.key in outcome.transient else ""
            print(f"FAILED {cell_label(cell)}: {outcome.failed[cell.key]}{resumable}{restarts_note(cell, store, cell.key in retried)}",
                  file=sys.stderr)
    return outcome


def restarts_note(cell: Cell, store: RunStore, retried: bool) -> str:
    """`` (started 3 times: requeued by SLURM, retried; attempts log P)`` for a cell that did not run in
    one go, else nothing: what happened to it, and where to read each start."""
    starts = read_attempts(store, cell.key)
    if len(starts) <= 1 and not retried:
        return ""
    how = [word for word, happened in (("requeued by SLURM", len(starts) > 1 + retried), ("retried", retried)) if happened]
    log = store.work_dir(cell.key) / ATTEMPTS_LOG
    return f" (started {len(starts)} time{'s' * (len(starts) != 1)}: {', '.join(how)}; attempts log {log})"


class SlurmExecutor:
    """``--executor slurm``: the cells as one SLURM job array."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("SLURM (with --executor slurm)")
        group.add_argument("--partition", help="SLURM partition")
        group.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per array task (default: 1)")
        group.add_argument("--processes-per-job", type=int, help="data-parallel processes per array task (default: one per GPU)")
        group.add_argument("--cpus-per-job", type=int, default=4, help="CPUs per process of an array task (default: 4)")
        group.add_argument("--time-limit", type=int, default=240,
                           help="minutes per task before SLURM stops and requeues it (default: 240)")
        group.add_argument("--cells-per-task", type=int, default=1, metavar="N",
                           help="cells run one after another by each array task, sharing its built model and caches "
                                "(default: 1; --time-limit must cover N cells)")
        group.add_argument("--array-parallelism", type=int, default=32, help="array tasks running at once (default: 32)")
        group.add_argument("--sbatch", type=key_value_argument, action="append", default=[], metavar="KEY=VALUE",
                           help="extra sbatch option, e.g. account=proj or qos=high (repeatable)")

    def check(self, args: argparse.Namespace) -> None:
        """The task's node checks its own device; the cluster is checked when the array is submitted."""
        if args.cells_per_task < 1:
            raise BenchError(f"--cells-per-task {args.cells_per_task}: each SLURM array task must run at least 1 cell.")

    def run(self, cells: Sequence[Cell], context: RunContext, args: argparse.Namespace) -> SweepOutcome:
        options = SlurmOptions(
            partition=args.partition, gpus_per_job=args.gpus_per_job, processes_per_job=args.processes_per_job,
            cpus_per_job=args.cpus_per_job, time_limit_min=args.time_limit, array_parallelism=args.array_parallelism,
            extra=dict(args.sbatch), cells_per_task=args.cells_per_task,
        )
        return run_slurm(cells, context, options)


EXECUTORS.add("slurm", SlurmExecutor(), "a SLURM job array submitted with submitit, one or --cells-per-task cells per task")
