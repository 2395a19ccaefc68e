"""SDPT: one extended fusion layer forward with cached pseudo-inverses vs recomputing them per call.

The official code recomputes ``pinv(W_v^T)`` and ``pinv(W_l^T)`` (SVDs of 2048x256 and 2048x768) in
every forward of every fusion layer (``get_inverse``, called from ``BiMultiHeadAttention.forward`` in
wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py); ``methods.sdpt`` caches them. Sizes are
GLIP-T's fusion layer (v_dim 256, l_dim 768, embed 2048, 8 heads), K = 100 tokens, 400 image tokens
and 256 text slots, batch 1. Nothing here asserts a speed; compare the two rows of the group.
"""

from __future__ import annotations

import pytest
import torch

from bench.models.glip.fusion import BiMultiHeadAttention
from methods.sdpt import ProjectedPrototypeTokens

V_DIM, L_DIM, EMBED, HEADS, K, N_IMAGE, N_TEXT = 256, 768, 2048, 8, 100, 400, 256


class RecomputedEveryCall(ProjectedPrototypeTokens):
    """The official behaviour: both pseudo-inverses recomputed in each forward."""

    def _ensure_fresh(self) -> None:
        self.refresh()


def layer_and_inputs(extension_class: type[ProjectedPrototypeTokens]):
    torch.manual_seed(0)
    layer = BiMultiHeadAttention(V_DIM, L_DIM, EMBED, HEADS, dropout=0.0, clamp=50000.0).eval()
    layer.requires_grad_(False)
    layer.token_extension = extension_class(layer.v_proj, layer.l_proj, K, "uniform", False)
    v, l = torch.randn(1, N_IMAGE, V_DIM), torch.randn(1, N_TEXT, L_DIM)
    mask = torch.ones(1, N_TEXT, dtype=torch.long)
    mask[:, 20:] = 0
    return layer, v, l, mask


def forward(layer, v, l, mask):
    with torch.no_grad():
        return layer(v, l, mask)


@pytest.mark.benchmark(group="sdpt")
@pytest.mark.parametrize("pinv", ["cached", "recomputed"])
def test_sdpt_fusion_layer_forward(benchmark, pinv):
    layer, v, l, mask = layer_and_inputs(ProjectedPrototypeTokens if pinv == "cached" else RecomputedEveryCall)
    forward(layer, v, l, mask)  # warm-up
    benchmark.extra_info.update({"v_dim": V_DIM, "l_dim": L_DIM, "embed_dim": EMBED, "num_tokens": K, "image_tokens": N_IMAGE})
    benchmark.pedantic(forward, args=(layer, v, l, mask), rounds=3, iterations=1)
