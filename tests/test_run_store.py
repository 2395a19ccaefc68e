"""The run store: atomic writes, and result files that cannot be read are neither results nor "done"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.runs.plan import Cell, missing_cells
from bench.runs.record import RunRecord, RunSpec
from bench.runs.store import RunStore, write_atomically
from tests.run_support import stored_record

REPO = Path(__file__).resolve().parents[1]
SPEC = RunSpec(model="glip-nano", method="sdpt", dataset="shapes-colours", protocol="shapes", train_seed=0)
KEYS = ("a" * 20, "b" * 20, "c" * 20)


def spec_of(seed: int) -> RunSpec:
    return RunSpec(**(SPEC.to_dict() | {"train_seed": seed}))


def test_a_record_survives_its_json_round_trip():
    record = stored_record(SPEC, KEYS[0])
    again = RunRecord.from_json(record.to_json())
    assert again.to_json() == record.to_json()
    assert again.spec == SPEC and again.cost == record.cost


# ------------------------------------------------------------------------------- atomic writes
def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_bytes(b"old")

    def no_space(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"new" * 100_000)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from bench.files import write_atomically

def stall(fd):  # the payload is written but not yet renamed into place
    print("writing", flush=True)
    time.sleep(60)

os.fsync = stall
write_atomically(Path(sys.argv[1]), b"{" * (16 << 20))
"""


@pytest.mark.parametrize("existing", [True, False], ids=["replacing-a-result", "new-result"])
def test_a_writer_killed_mid_write_leaves_the_old_file_or_none(tmp_path, existing):
    store = RunStore(tmp_path / "runs")
    target = store.result_path(KEYS[0])
    if existing:
        store.save_result(stored_record(SPEC, KEYS[0]))
    before = target.read_bytes() if existing else None

    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.wait(timeout=30)

    leftovers = [p.name for p in store.done_dir.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{target.name}.") and leftovers[0].endswith(".tmp")
    if existing:
        assert target.read_bytes() == before
        assert store.finished_keys() == {KEYS[0]}
        assert [r.key for r in store.load_records()[0]] == [KEYS[0]]
    else:
        assert not target.exists()
        assert store.finished_keys() == set()
        assert store.load_records() == ([], [])


# ------------------------------------------------------------------------ unreadable result files
def write_unreadable_files(store: RunStore) -> dict[str, str]:
    """Next to one good result: a truncated file, another run's record under a wrong name, a JSON list,
    and a record whose metrics are a list. Returns {file stem: what the skip reason should say}."""
    store.save_result(stored_record(SPEC, KEYS[0]))
    good = store.result_path(KEYS[0]).read_text()
    store.result_path("truncated").write_text(good[: len(good) // 2])
    store.result_path(KEYS[1]).write_text(good)  # the result of KEYS[0] under the name KEYS[1]
    store.result_path("a-list").write_text("[]")
    bad_metrics = json.loads(good)
    bad_metrics["metrics"]["val"] = []
    store.result_path("bad-metrics").write_text(json.dumps(bad_metrics))
    return {"truncated": "JSONDecodeError", KEYS[1]: f"holds the result of run {KEYS[0]}", "a-list": "JSON object",
            "bad-metrics": "malformed record"}


def test_unreadable_result_files_are_skipped_with_a_warning_naming_each(tmp_path):
    store = RunStore(tmp_path / "runs")
    expected = write_unreadable_files(store)
    with pytest.warns(UserWarning) as warned:
        records, skipped = store.load_records()
    assert [r.key for r in records] == [KEYS[0]]
    reasons = {item.path.stem: item.reason for item in skipped}
    assert set(reasons) == set(expected)
    for stem, says in expected.items():
        assert says in reasons[stem], reasons[stem]
    messages = [str(w.message) for w in warned]
    assert len(messages) == len(expected)
    assert all(any(str(store.result_path(stem)) in m for m in messages) for stem in expected)


def test_an_unreadable_result_does_not_make_its_cell_done_and_a_new_run_replaces_it(tmp_path):
    store = RunStore(tmp_path / "runs")
    write_unreadable_files(store)
    cells = [Cell(spec_of(seed), key) for seed, key in enumerate(KEYS)]
    assert store.finished_keys() >= {KEYS[0], KEYS[1]}  # the listing sees both files ...

    with pytest.warns(UserWarning, match=KEYS[1]):
        todo = missing_cells(cells, store)
    assert [c.key for c in todo] == [KEYS[1], KEYS[2]]  # ... but only KEYS[0] holds its own result

    store.save_result(stored_record(cells[1].spec, KEYS[1]))  # what running the cell does
    assert [c.key for c in missing_cells(cells, store)] == [KEYS[2]]
    assert store.read_result(KEYS[1]).spec == cells[1].spec


def test_temporary_and_foreign_names_are_not_results(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.save_result(stored_record(SPEC, KEYS[0]))
    (store.done_dir / f".{KEYS[1]}.json.x1y2.tmp").write_text("{")
    (store.done_dir / "notes.txt").write_text("not a result")
    assert store.finished_keys() == {KEYS[0]}
    assert [r.key for r in store.load_records()[0]] == [KEYS[0]]


# ------------------------------------------------------------------------------------ failures
def test_a_failure_is_kept_apart_and_cleared_by_a_later_result(tmp_path):
    store = RunStore(tmp_path / "runs")
    try:
        raise RuntimeError("out of memory")
    except RuntimeError as error:
        store.save_failure(KEYS[0], SPEC, error)
    failure = store.failures()[KEYS[0]]
    assert failure["error"] == "RuntimeError: out of memory" and "Traceback" in failure["traceback"]
    assert failure["spec"] == SPEC.to_dict()
    assert store.finished_keys() == set()
    (store.failed_dir / "garbled.json").write_text("{")
    assert "unreadable failure file" in store.failures()["garbled"]["error"]

    store.save_result(stored_record(SPEC, KEYS[0]))
    assert KEYS[0] not in store.failures()
