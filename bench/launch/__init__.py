"""Executors: where the missing cells of a sweep run, by name (``--executor``).

Each executor registers, where it is defined, a function ``(cells, context, args) -> SweepOutcome``
that reads its own options from the parsed command line: ``local`` (this machine,
:mod:`bench.launch.local`) and ``slurm`` (a SLURM job array through submitit,
:mod:`bench.launch.slurm`). The command line reaches them only through :data:`EXECUTORS`.
"""

from bench.registry import Registry

EXECUTORS: Registry = Registry("executor")

# Importing an executor registers it.
from bench.launch import local as _local  # noqa: E402,F401
from bench.launch import slurm as _slurm  # noqa: E402,F401
