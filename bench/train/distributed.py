"""Data parallelism inside one run: which process this is, and the collectives the loop needs.

A run uses several GPUs when it is started as several processes with the usual ``torch.distributed``
variables set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): by
``torchrun``, or by the SLURM executor from submitit's distributed environment. Every process
trains on its share of each global batch (:func:`bench.train.batches.training_loader`), gradients
are averaged by ``DistributedDataParallel``, and only rank 0 evaluates, writes checkpoints, best
weights and the result; its decisions (new best, early stop) are broadcast so every rank follows
the same schedule. CUDA uses NCCL, CPU uses gloo (which is how the tests run it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size``, on GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: its own GPU when running on CUDA."""
        if requested.type == "cuda" and self.is_distributed:
            return torch.device("cuda", self.local_rank)
        return requested

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def join_process_group(device: torch.device) -> ProcessGroup:
    """The process group of this run from the environment, joined if it has more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    group = ProcessGroup(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if group.is_distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=group.rank, world_size=world_size)
    return group
