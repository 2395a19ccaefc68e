"""Fused attention kernels (``sdpa``) compute what the official attention does, and run only where they can.

GLIP's parity command is run with ``--attention sdpa`` against fixture A's official tensors (every
stage, evaluation and training, within the same tolerances), counting that fused kernels really ran.
Where the official computation differs from softmax attention (a ±clamp that could bind, dropout
in training) the official path must run instead, bit for bit.
"""

from __future__ import annotations

from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.models.base import ATTENTION_KERNELS
from bench.models.glip.fusion import BiMultiHeadAttention
from bench.models.glip.parity import run_parity
from bench.train.protocol import Attention
from tests.grounding_dino_support import tiny_task


@pytest.fixture
def fused_calls(monkeypatch) -> list[int]:
    """Counts every call of ``F.scaled_dot_product_attention`` (ours and transformers')."""
    calls: list[int] = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("kind", ATTENTION_KERNELS)
def test_parity_holds_with_either_kernel(fixture_a_dir, fused_calls, kind):
    results = run_parity(fixture_a_dir, attention=kind)
    failed = [r.line() for r in results if not r.passed]
    assert not failed, failed
    assert (len(fused_calls) > 0) == (kind == "sdpa")


def _layer_and_inputs(scale: float, clamp: float, dropout: float = 0.0):
    torch.manual_seed(0)
    layer = BiMultiHeadAttention(v_dim=16, l_dim=12, embed_dim=32, num_heads=4, dropout=dropout, clamp=clamp)
    v, l = scale * torch.randn(2, 30, 16), scale * torch.randn(2, 7, 12)
    return layer, (v, l, torch.tensor([[1] * 7, [1] * 4 + [0] * 3]))


def test_fused_fusion_attention_matches_the_official_one():
    layer, inputs = _layer_and_inputs(scale=1.0, clamp=50000.0)
    layer.eval()
    expected = layer(*inputs)
    layer.attention_kernel = "sdpa"
    fused = layer(*inputs)
    for ours, official in zip(fused, expected):
        torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["a clamp could bind", "dropout acts"])
def test_the_official_path_runs_where_fused_kernels_would_differ(fused_calls, case):
    if case == "a clamp could bind":
        layer, inputs = _layer_and_inputs(scale=300.0, clamp=50.0)
        layer.eval()
    else:
        layer, inputs = _layer_and_inputs(scale=1.0, clamp=50000.0, dropout=0.1)
        layer.train()
    torch.manual_seed(1)
    expected = layer(*inputs)
    layer.attention_kernel = "sdpa"
    torch.manual_seed(1)
    fused = layer(*inputs)
    assert not fused_calls
    assert all(torch.equal(a, b) for a, b in zip(fused, expected))


def test_grounding_dino_keeps_transformers_attention_and_refuses_eager(grounding_dino_factory):
    model = grounding_dino_factory()
    images, sizes, _, prompt = tiny_task(model)
    with torch.no_grad():
        [built] = model(images, sizes, prompt)
        model.set_attention_kernel("sdpa")
        [again] = model(images, sizes, prompt)
    assert torch.equal(built.scores, again.scores) and torch.equal(built.boxes, again.boxes)
    with pytest.raises(BenchError, match="sub-sentence text mask"):
        model.set_attention_kernel("eager")


def test_protocols_offer_default_and_the_kernels():
    assert get_args(Attention) == ("default", *ATTENTION_KERNELS)


def test_a_sweep_asking_grounding_dino_for_eager_attention_is_refused_before_any_cell():
    from bench.runs.plan import SweepRequest, validate_request

    request = SweepRequest(model="grounding-dino-t", methods=["sdpt"], datasets=["shapes-colours"],
                           protocol="shapes", protocol_overrides={"attention": "eager"})
    with pytest.raises(BenchError, match="attention=sdpa"):
        validate_request(request)
    validate_request(SweepRequest(model="grounding-dino-t", methods=["sdpt"], datasets=["shapes-colours"],
                                  protocol="shapes", protocol_overrides={"attention": "sdpa"}))
    validate_request(SweepRequest(model="glip-t", methods=["sdpt"], datasets=["shapes-colours"],
                                  protocol="shapes", protocol_overrides={"attention": "eager"}))
