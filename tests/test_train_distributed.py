"""Data-parallel training inside one run: two CPU processes with gloo, as two GPUs would run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.runs.store import RunStore
from tests.run_support import synthetic_cache

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
REPO = WORKER.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_each_batch_keep_identical_weights_and_store_one_record(tmp_path, tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    port = free_port()
    workers = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        workers.append(subprocess.Popen([sys.executable, str(WORKER), str(results), str(cache), str(out)],
                                        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))

    # Each global batch of 4 is split 2 + 2: rank 0 takes positions 0, 2, ..., rank 1 takes 1, 3, ...
    assert sorted(rank0["positions"]) == [0, 2, 4, 6, 8, 10]
    assert sorted(rank1["positions"]) == [1, 3, 5, 7, 9, 11]
    # Gradients were averaged: both replicas moved, and moved identically.
    assert rank0["before"] == rank1["before"] and rank0["after"] == rank1["after"]
    assert rank0["after"] != rank0["before"]
    # Only rank 0 evaluated and stored the result.
    assert rank0["stored"] and not rank1["stored"]
    records, skipped = RunStore(results / "runs").load_records()
    assert [r.key for r in records] == [rank0["key"]] and not skipped
    assert records[0].cost.train_steps == 3 and records[0].best_step == 3
