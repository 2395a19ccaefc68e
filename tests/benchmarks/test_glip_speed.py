"""GLIP speed and memory on the CPU (random weights, small images).

Times come from pytest-benchmark; the peak memory a step adds is probed in a fresh process
(``glip_probe.py``) and stored in the benchmark's ``extra_info``. Nothing here asserts a speed.

The ``no unwanted gradients`` group times steps with a frozen trunk (SDPT) and a frozen GLIP-T-sized
DyConv with the current ops and with the plain ones they replace (``plain_ops``,
tests/test_glip_gradients.py), alternating so that a shared machine slows both alike; the ratio
current / plain goes into ``extra_info`` and is printed (``-s``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from glip_probe import build, run_probe, step  # noqa: E402

import methods  # noqa: E402,F401  (registers every method)
from bench.models.glip.dyconv import DyConv  # noqa: E402
from bench.models.glip.text_features import TextFeatures  # noqa: E402
from bench.tuning.base import build_method  # noqa: E402
from tests.test_glip_gradients import plain_ops  # noqa: E402

IMAGE_SIZE = 256
FPN_SIDES_320 = (40, 20, 10, 5, 3)  # P3-P7 of a 320x320 image (strides 8-128, rounded up)
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


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare_with_plain_ops(benchmark, run: Callable[[], object], rounds: int) -> None:
    """Best-of-``rounds`` seconds of ``run`` with the plain ops and with the current ones, alternating
    after one warm-up each; pytest-benchmark then times the current ops."""
    with plain_ops():
        run()
    run()
    plain, current = [], []
    for _ in range(rounds):
        with plain_ops():
            plain.append(seconds(run))
        current.append(seconds(run))
    ratio = min(current) / min(plain)
    benchmark.extra_info.update({"plain_s": min(plain), "current_s": min(current), "current_over_plain": ratio})
    print(f"\n{benchmark.name}: plain {min(plain):.3f} s, current {min(current):.3f} s, current / plain {ratio:.3f}")
    benchmark.pedantic(run, rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="no unwanted gradients")
@pytest.mark.parametrize("model_name", ["glip-nano", "glip-t"])
def test_frozen_trunk_step_against_plain_ops(benchmark, model_name):
    """One SDPT training step (forward, backward; no update) at 128x128. glip-nano's DyHead is not
    deformable, so only the fusion layers' row-max shift differs there."""
    parts = build(model_name, 128)
    build_method("sdpt").apply(parts[0])
    compare_with_plain_ops(benchmark, lambda: step(*parts, "train"), rounds=3)


@pytest.mark.benchmark(group="no unwanted gradients")
def test_frozen_dyconv_step_against_plain_ops(benchmark):
    """A frozen GLIP-T-sized DyConv (256 channels) on the FPN levels of one 320x320 image: forward and
    backward to its inputs, as in a frozen-trunk step."""
    torch.manual_seed(0)
    block = DyConv(256, 16).requires_grad_(False)
    visual = [torch.randn(1, 256, side, side, requires_grad=True) for side in FPN_SIDES_320]
    text = TextFeatures(torch.zeros(1, 1, 8), torch.ones(1, 1, dtype=torch.long))

    def run():
        outputs, _ = block(visual, text)
        torch.autograd.grad(sum(out.sum() for out in outputs), visual)

    compare_with_plain_ops(benchmark, run, rounds=5)
