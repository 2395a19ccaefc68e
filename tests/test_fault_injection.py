"""Fault injection: cells killed (SIGKILL, no clean-up) at chosen and random points, again and again,
end with records identical to an uninterrupted run's; a partial file is never read as a result; a
damaged checkpoint is set aside and the cell resumes from the previous one, or from scratch.

Each attempt is a fresh process (``VICTIM``) that runs one cell and kills itself where it is told:
inside an optimiser step, between writing a checkpoint's temporary file and renaming it, halfway
through writing the result, during an evaluation (validation or test), or after a random delay.
The kill points are patched in by the victim script, so the project's code has no fault hooks.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bench.launch.base import read_attempts
from bench.runs.cell import SELECTED_WEIGHTS, run_cell
from bench.runs.plan import plan_cells
from bench.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, checkpoint_files
from tests.run_support import quiet_context, synthetic_cache, tiny_request

pytestmark = [pytest.mark.slow, pytest.mark.soak]  # minutes of killed processes: make test-soak (CI runs it)

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET = "shapes-colours"
METHODS = ("bitfit", "sdpt")
PROTOCOL = {"max_steps": 16, "warmup_steps": 0, "eval_every": 8, "batch_size": 2, "checkpoint_every": 2}
# Per method, in order: (where, on which occurrence in that attempt). Each attempt resumes from the last
# checkpoint and moves at most a few steps on, so every point is still ahead when its turn comes; the
# result is written, and the test split evaluated, only at the very end, so those come last.
KILLS = [("optimizer-step", 1), ("optimizer-step", 3), ("checkpoint-rename", 2), ("random", 0), ("checkpoint-rename", 1),
         ("optimizer-step", 2), ("evaluation", 1),
         ("random", 0), ("checkpoint-rename", 1), ("random", 0), ("optimizer-step", 4), ("evaluation", 1),
         ("result-write", 1), ("random", 0)]
RANDOM_DELAY_S = (1.0, 5.0)  # after the process starts: while it imports and builds the model, or trains
SEED = 1234

VICTIM = """
import json, os, random, signal, sys, threading, time
import torch
import bench.files, bench.train.evaluate, bench.train.loop
from bench.launch.base import run_cell_recording_failure
from bench.runs.plan import plan_cells
from tests.run_support import quiet_context, tiny_request

where, occurrence, results, cache, method, protocol, delay = json.loads(sys.argv[1])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def on_occurrence(function, point):
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if where == point and calls[0] == occurrence:
            die()
        return function(*args, **kwargs)
    return wrapped

optimizer_step = torch.optim.AdamW.step
def step_then_die(self, *args, **kwargs):  # the update done, the step's bookkeeping and checkpoint not
    result = optimizer_step(self, *args, **kwargs)
    step_then_die.calls += 1
    if where == "optimizer-step" and step_then_die.calls == occurrence:
        die()
    return result
step_then_die.calls = 0
torch.optim.AdamW.step = step_then_die

replace = os.replace
renames = [0]
def replace_or_die(source, target):
    if where == "checkpoint-rename" and str(target).endswith("checkpoint.pt") and not str(source).endswith("checkpoint.pt"):
        renames[0] += 1
        if renames[0] == occurrence:
            die()  # the temporary file is written and synced, the rename never happens
    return replace(source, target)
os.replace = replace_or_die

write = bench.files.write_atomically
def write_or_die(path, data):
    if where == "result-write" and path.parent.name == "done":
        with open(path.with_name("." + path.name + ".partial.tmp"), "wb") as half:
            half.write(data[: len(data) // 2])
        die()  # half a result in a temporary file beside it, nothing at its name
    return write(path, data)
bench.files.write_atomically = write_or_die
bench.runs.store.write_atomically = write_or_die

bench.train.loop.evaluate = on_occurrence(bench.train.loop.evaluate, "evaluation")
import bench.runs.cell
bench.runs.cell.evaluate = on_occurrence(bench.runs.cell.evaluate, "evaluation")
if where == "random":
    threading.Timer(delay, die).start()

from pathlib import Path
context = quiet_context(Path(results), Path(cache))
[cell] = plan_cells(tiny_request([method], ["%s"], protocol_overrides=protocol), context)
print(json.dumps({"result": repr(run_cell_recording_failure(cell, context))}))
""" % DATASET


def cell_of(method: str, results: Path, cache: Path):
    context = quiet_context(results, cache)
    [cell] = plan_cells(tiny_request([method], [DATASET], protocol_overrides=PROTOCOL), context)
    return cell, context


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def attempt(where: str, occurrence: int, results: Path, cache: Path, method: str, delay: float = 0.0) -> int:
    """Run the cell once in a fresh process told to die at ``where``; its exit code (-9 when it died)."""
    argument = json.dumps([where, occurrence, str(results), str(cache), method, PROTOCOL, delay])
    env = os.environ | {"PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", VICTIM, argument], cwd=REPOSITORY, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode in (-9, 0), done.stderr[-3000:]
    return done.returncode


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory, [DATASET])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """Each method's cell run once without interruption, in this process, single-threaded like the victims."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = {}
        for method in METHODS:
            cell, context = cell_of(method, tmp_path_factory.mktemp("uninterrupted"), cache)
            records[method] = (run_cell(cell, context), load_file(context.store.work_dir(cell.key) / SELECTED_WEIGHTS))
        return records
    finally:
        torch.set_num_threads(threads)


def test_kills_at_chosen_and_random_points_change_no_record(tmp_path_factory, cache, uninterrupted):
    chance = random.Random(SEED)
    kills, resumed_from_checkpoint = 0, 0
    for method in METHODS:
        results = tmp_path_factory.mktemp(f"killed-{method}")
        cell, context = cell_of(method, results, cache)
        for where, occurrence in KILLS:
            code = attempt(where, occurrence, results, cache, method, delay=chance.uniform(*RANDOM_DELAY_S))
            assert code in (-9, 0), code  # killed, or (a random delay too long) it finished first
            kills += code == -9
            records, skipped = context.store.load_records()
            assert skipped == [] and all(r.key == cell.key for r in records)  # no partial file read as a result
        assert attempt("none", 0, results, cache, method) == 0
        record = context.store.read_result(cell.key)
        reference, reference_weights = uninterrupted[method]
        assert record.key == reference.key and record.best_step == reference.best_step
        assert same(record.val, reference.val) and same(record.test, reference.test)
        assert record.cost.train_steps == reference.cost.train_steps == PROTOCOL["max_steps"]
        weights = load_file(context.store.work_dir(cell.key) / SELECTED_WEIGHTS)
        assert weights.keys() == reference_weights.keys()
        assert all(weights[name].equal(reference_weights[name]) for name in weights)
        assert not any(path.exists() for path in checkpoint_files(context.store.work_dir(cell.key)))
        resumed_from_checkpoint += sum("resumes from its checkpoint" in line for line in read_attempts(context.store, cell.key))
    print(f"{kills} kills injected, {resumed_from_checkpoint} resumptions from a checkpoint, 0 records differed")
    assert kills >= 20 and resumed_from_checkpoint >= 8


@pytest.mark.parametrize("damaged", ["newest", "both"])
def test_a_damaged_checkpoint_is_set_aside_and_the_cell_still_ends_the_same(tmp_path_factory, cache, uninterrupted, capsys, damaged):
    method = METHODS[0]
    results = tmp_path_factory.mktemp(f"damaged-{damaged}")
    cell, context = cell_of(method, results, cache)
    assert attempt("optimizer-step", 7, results, cache, method) == -9  # checkpoints of steps 4 and 6 are on disk
    newest, previous = checkpoint_files(context.store.work_dir(cell.key))
    assert newest.is_file() and previous.is_file()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    if damaged == "both":
        previous.write_bytes(previous.read_bytes()[:1000])  # truncated
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference ran
    try:
        record = run_cell(cell, context)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"The checkpoint {newest} cannot be used: its content does not match its checksum" in out
    if damaged == "both":
        assert f"The checkpoint {previous} cannot be used" in out and "Resuming" not in out
    else:
        assert f"Resuming from step 4 of {PROTOCOL['max_steps']}" in out
    reference, _ = uninterrupted[method]
    assert same(record.val, reference.val) and same(record.test, reference.test) and record.best_step == reference.best_step
    assert (newest.with_name(CHECKPOINT + ".damaged")).is_file()
    assert damaged == "newest" or (newest.with_name(PREVIOUS_CHECKPOINT + ".damaged")).is_file()


def test_a_full_disk_fails_the_cell_at_a_write_with_nothing_corrupted(tmp_path_factory, cache, uninterrupted, monkeypatch):
    """Every write below the results folder fails with ENOSPC: the cell fails as something a rerun
    resumes, no partial file is left under a result's name, and once there is room the same cell ends
    as an uninterrupted run did."""
    import errno

    import torch

    import bench.files
    from bench.launch.base import run_cell_recording_failure

    method = METHODS[0]
    results = tmp_path_factory.mktemp("full-disk")
    cell, context = cell_of(method, results, cache)
    real_fsync = os.fsync

    def no_space(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference ran
    try:
        with monkeypatch.context() as patch:
            patch.setattr(bench.files.os, "fsync", no_space)
            reason, transient = run_cell_recording_failure(cell, context)
        assert "No space left on device" in reason and transient
        assert not context.store.result_path(cell.key).exists()
        assert not [path for path in results.rglob("*.tmp")]  # temporary files removed on the way out
        assert os.fsync is real_fsync
        assert run_cell_recording_failure(cell, context) is None
    finally:
        torch.set_num_threads(threads)
    reference, _ = uninterrupted[method]
    record = context.store.read_result(cell.key)
    assert same(record.val, reference.val) and same(record.test, reference.test)
