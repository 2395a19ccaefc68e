"""Optional experiment tracking: a trained cell's curves to TensorBoard or Weights & Biases.

Off by default, and never a hard dependency: each kind imports its package only when it is chosen,
and :func:`check_tracker` refuses a missing package before a sweep writes anything. A tracker only
watches (training loss and learning rate per optimiser step, validation metrics at each validation);
results are the run store's records, never read back from these logs. Logs go below
``RESULTS/logs/<kind>/``, one run per cell, named by its run key.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from bench.errors import BenchError
from bench.registry import Registry

OFF = "off"


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker is told about the cell it follows: its run key, its spec (as a dict) and
    ``logs``, the results folder's ``logs/`` below which every kind keeps its own folder."""

    key: str
    config: Mapping[str, Any]
    logs: Path


class Tracker(ABC):
    """Receives scalars at optimiser steps. Kinds open their run at the first :meth:`log`, so a cell
    that logs nothing (zero-shot trains nothing) leaves nothing behind."""

    @abstractmethod
    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Record ``scalars`` (name -> value, e.g. ``train/loss``) at optimiser step ``step``."""

    @abstractmethod
    def close(self) -> None:
        """Flush and close the run (a no-op when nothing was logged)."""


@dataclass(frozen=True)
class TrackerKind:
    """One way to track: the module it imports (only when chosen), the pip package and extra that
    provide it, and how to open a tracker for a run."""

    module: str
    package: str
    open: Callable[[TrackedRun], Tracker]

    def check(self, name: str) -> None:
        """Import the module now, so a missing package fails before any cell runs, not after the first step."""
        try:
            importlib.import_module(self.module)
        except ImportError as error:
            raise BenchError(
                f"--log {name} needs the {self.package} package, which this Python ({sys.executable}) cannot import "
                f"({error}). Install it with pip install 'vl-peft-bench[{self.package}]' (or pip install "
                f"{self.package}), or leave --log off: tracking is optional and changes no result."
            ) from None


TRACKERS: Registry[TrackerKind] = Registry("tracker")


class TensorBoardTracker(Tracker):
    """Event files in ``logs/tensorboard/<run key>/``, written by ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, run: TrackedRun) -> None:
        self.folder = run.logs / "tensorboard" / run.key
        self.writer: Any = None

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # The first step this process logs is where a resumed cell restarts: purge_step hides the events
            # an interrupted run logged from there on, after its last checkpoint, so no step appears twice
            # (https://pytorch.org/docs/stable/tensorboard.html#torch.utils.tensorboard.writer.SummaryWriter).
            self.writer = SummaryWriter(str(self.folder), purge_step=step)
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker(Tracker):
    """An offline Weights & Biases run in ``logs/wandb/``, id and name the run key, config the run spec;
    ``wandb sync`` uploads it later (https://docs.wandb.ai/ref/python/init)."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run
        self.session: Any = None

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self.session is None:
            import wandb

            folder = self.run.logs / "wandb"
            folder.mkdir(parents=True, exist_ok=True)  # wandb.init wants an existing dir
            self.session = wandb.init(mode="offline", dir=str(folder), name=self.run.key, id=self.run.key,
                                      config=dict(self.run.config))
        self.session.log(dict(scalars), step=step)

    def close(self) -> None:
        if self.session is not None:
            self.session.finish()


TRACKERS.add("tensorboard", TrackerKind("torch.utils.tensorboard", "tensorboard", TensorBoardTracker),
             "TensorBoard event files below RESULTS/logs/tensorboard/")
TRACKERS.add("wandb", TrackerKind("wandb", "wandb", WandbTracker), "offline Weights & Biases runs below RESULTS/logs/wandb/")


def tracker_choices() -> list[str]:
    """The values ``--log`` accepts: off and every registered kind."""
    return [OFF, *TRACKERS.names()]


def check_tracker(name: str) -> None:
    """Refuse an unknown kind, or one whose package is not installed, before anything runs."""
    if name != OFF:
        TRACKERS.get(name).check(name)


@contextmanager
def tracking(name: str, run: TrackedRun) -> Iterator[Tracker | None]:
    """The tracker ``name`` for ``run`` (None when off), closed on the way out, also after an error."""
    if name == OFF:
        yield None
        return
    tracker = TRACKERS.get(name).open(run)
    try:
        yield tracker
    finally:
        tracker.close()
