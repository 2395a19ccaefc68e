"""Cell leases: one owner per running cell; gone owners are broken with that said; two launchers on
one results folder never run a cell twice."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.launch.base import Leased, read_attempts, run_cell_recording_failure
from bench.runs.lease import STALE_AFTER_S, Heartbeat, Leases, Owner, owner_gone
from bench.runs.plan import plan_cells
from tests.run_support import TINY_PROTOCOL, quiet_context, synthetic_cache, tiny_request

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET = "shapes-colours"


def dead_pid() -> int:
    """A pid that no process has: a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leases(tmp_path: Path, queue=lambda: None) -> Leases:
    return Leases(tmp_path / "leases", queue=queue)


def test_a_lease_has_one_owner_until_it_is_released(tmp_path):
    store, first, second = leases(tmp_path), Owner.this_process(), Owner.this_process()
    assert store.take("k", first) is None
    held = store.take("k", second)
    assert held is not None and held.token == first.token  # this process is alive: its lease holds
    store.release("k", second)  # not its lease: left alone
    assert store.holder("k").token == first.token
    store.release("k", first)
    assert store.holder("k") is None and store.take("k", second) is None


def test_the_lease_of_a_dead_process_is_broken_and_said(tmp_path):
    store, said = leases(tmp_path), []
    gone = dataclasses.replace(Owner.this_process(), pid=dead_pid())
    assert store.take("k", gone) is None
    mine = Owner.this_process()
    assert store.take("k", mine, say=said.append) is None
    assert store.holder("k").token == mine.token
    assert said == [f"Broke the lease of cell k held by {gone.describe()}: process {gone.pid} on {gone.host} no longer exists."]


def test_a_heartbeat_older_than_the_timeout_breaks_a_lease_of_another_host(tmp_path):
    store, said = leases(tmp_path), []
    long_ago = time.time() - STALE_AFTER_S - 60
    elsewhere = Owner("node-7", 4242, None, long_ago, long_ago, "t1")
    assert store.take("k", elsewhere) is None
    assert store.take("k", Owner.this_process(), say=said.append) is None
    assert "its heartbeat stopped 11 min ago" in said[0]
    fresh = Owner("node-7", 4242, None, time.time(), time.time(), "t2")
    assert owner_gone(fresh, lambda: None) is None  # another host, recent heartbeat: may be working


def test_a_slurm_owner_lives_as_long_as_its_task_is_queued(tmp_path):
    queue = {"14_0"}
    store = leases(tmp_path, queue=lambda: set(queue))
    store.write_queued("k", Owner.queued_task("14_0"))
    held = store.take("k", Owner.this_process())
    assert held.slurm_task == "14_0" and held.describe().startswith("job 14_0 queued, ")
    assert store.running(["k", "other"]).keys() == {"k"}
    queue.clear()  # the job left the queue without finishing the cell (scancel, node failure)
    store = leases(tmp_path, queue=lambda: set(queue))
    assert store.running(["k"]) == {} and store.take("k", Owner.this_process()) is None


def test_a_task_adopts_the_lease_written_at_its_submission_and_keeps_it_on_requeue(tmp_path):
    store = leases(tmp_path, queue=lambda: {"14_0"})
    store.write_queued("k", Owner.queued_task("14_0"))
    task = dataclasses.replace(Owner.this_process(), slurm_task="14_0")
    assert store.take("k", task, adopt="14_0") is None and store.holder("k").token == task.token
    store.write_queued("k", Owner.queued_task("14_0"))  # the launcher wrote late: the started task keeps it
    assert store.holder("k").token == task.token
    requeued = dataclasses.replace(Owner.this_process(), slurm_task="14_0")
    assert store.take("k", requeued, adopt="14_0") is None  # the same task, requeued, takes its lease over


def test_a_heartbeat_renews_and_notices_a_lost_lease(tmp_path):
    store, owner = leases(tmp_path), Owner.this_process()
    assert store.take("k", owner) is None
    with Heartbeat(store, "k", owner, interval=0.05) as beat:
        time.sleep(0.3)
        assert store.holder("k").heartbeat > owner.heartbeat
        store.path("k").unlink()
        store.take("k", Owner.this_process())  # someone broke and took it
        time.sleep(0.3)
        assert beat.lost
    assert store.holder("k") is not None  # the new owner's lease is not released by the old one


def test_a_cell_leased_elsewhere_is_left_alone_and_shown_as_running(tmp_path_factory, capsys):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    results = tmp_path_factory.mktemp("results")
    context = quiet_context(results, cache)
    [cell] = plan_cells(tiny_request(["bitfit"], [DATASET]), context)
    other = Owner("node-3", 77, None, time.time(), time.time(), "x")
    assert Leases(context.store.leases_dir).take(cell.key, other) is None
    assert isinstance(run_cell_recording_failure(cell, context), Leased)
    assert not context.store.result_path(cell.key).exists() and read_attempts(context.store, cell.key) == []
    args = ["--methods", "bitfit", "--datasets", DATASET, "--protocol", "shapes", "--results", str(results),
            "--cache-dir", str(cache), "--no-progress", *(w for k, v in TINY_PROTOCOL.items() for w in ("--protocol-set", f"{k}={v}"))]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"running  {cell.key}" in out and "(process 77 on node-3, " in out
    assert "1 cells: 0 done, 1 running elsewhere, 0 to run." in out


RACER = """
import sys
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.soak
def test_two_launchers_started_at_once_never_run_one_cell_twice(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    results = tmp_path_factory.mktemp("shared-results")
    args = ["--methods", "bitfit,linear-probe,sdpt", "--datasets", DATASET, "--seeds", "0,1", "--protocol", "shapes",
            "--results", str(results), "--cache-dir", str(cache), "--no-progress",
            *(w for k, v in TINY_PROTOCOL.items() for w in ("--protocol-set", f"{k}={v}"))]
    env = os.environ | {"PYTHONPATH": str(REPOSITORY)}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, *args], cwd=REPOSITORY, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [racer.communicate(timeout=600)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    done = sorted(path.stem for path in (results / "runs" / "done").glob("*.json"))
    assert len(done) == 6
    starts = {key: read_attempts(dataclasses.replace(quiet_context(results, cache)).store, key) for key in done}
    assert all(len(lines) == 1 for lines in starts.values()), starts  # each cell trained once, by one launcher
    launchers = {line.split(" pid ")[1].split()[0] for lines in starts.values() for line in lines}
    assert len(launchers) == 2, outputs  # both took part: the race was real
    assert not list((results / "runs" / "leases").glob("*.json"))  # every lease released
