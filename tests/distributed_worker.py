"""One process of a two-process (gloo, CPU) data-parallel run, for tests/test_train_distributed.py.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/distributed_worker.py RESULTS CACHE OUT

Plans the test's one BitFit cell, runs it with ``run_cell`` (which joins the process group from the
environment), and writes ``OUT/rank{r}.json``: the stream positions this rank trained on, and
digests of its trainable tensors before and after training.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bench.runs.cell as cell_module  # noqa: E402
from bench.runs.plan import plan_cells  # noqa: E402
from bench.train import batches  # noqa: E402
from tests.run_support import quiet_context, tiny_request  # noqa: E402

PROTOCOL = {"max_steps": 3, "warmup_steps": 0, "eval_every": 3, "batch_size": 4, "checkpoint_every": 1}


def digest(tensors) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def main() -> None:
    results, cache, out = (Path(arg) for arg in sys.argv[1:4])
    rank = int(os.environ["RANK"])
    seen: list[int] = []
    report: dict = {}
    sample = batches._AugmentedStream.__getitem__

    def record_position(self, position):
        seen.append(position)
        return sample(self, position)

    train = cell_module.train

    def train_and_digest(job):
        report["before"] = digest(job.trainable)
        outcome = train(job)
        report["after"] = digest(job.trainable)
        return outcome

    batches._AugmentedStream.__getitem__ = record_position
    cell_module.train = train_and_digest
    context = quiet_context(results, cache)
    [cell] = plan_cells(tiny_request(["bitfit"], ["shapes-colours"], protocol_overrides=PROTOCOL), context)
    record = cell_module.run_cell(cell, context)
    report.update(positions=seen, stored=record is not None, key=cell.key)
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
