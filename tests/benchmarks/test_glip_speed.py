"""GLIP-T speed and memory on the CPU (random weights, small images).

Times come from pytest-benchmark; the peak memory a step adds is probed in a fresh process
(``glip_probe.py``) and stored in the benchmark's ``extra_info``. Nothing here asserts a speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from glip_probe import build, run_probe, step  # noqa: E402

IMAGE_SIZE = 256
PROBE = Path(__file__).parent / "glip_probe.py"


@pytest.fixture(scope="module")
def glip_t():
    return build("glip-t", IMAGE_SIZE)


def probe_memory(mode: str) -> dict:
    return run_probe(PROBE, "glip-t", mode, IMAGE_SIZE)


@pytest.mark.benchmark(group="glip-t cpu 256x256")
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_glip_t_step(benchmark, glip_t, mode):
    step(*glip_t, mode)  # warm-up
    benchmark.extra_info.update(probe_memory(mode))
    benchmark.pedantic(step, args=(*glip_t, mode), rounds=3, iterations=1)
    assert benchmark.extra_info["peak_added_mib"] > 0
