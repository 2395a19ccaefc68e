"""SDPT's own properties (official code: wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py,
``get_inverse`` and ``BiMultiHeadAttention.forward``), on one small fusion layer and the small GLIP."""

from __future__ import annotations

import pytest
import torch

from bench.errors import BenchError
from bench.models.glip.fusion import BiMultiHeadAttention
from bench.tuning.base import build_method
from methods.sdpt import ProjectedPrototypeTokens

V_DIM, L_DIM, EMBED, HEADS, K = 16, 24, 64, 4, 5


def fusion_layer(seed: int = 0) -> BiMultiHeadAttention:
    torch.manual_seed(seed)
    layer = BiMultiHeadAttention(V_DIM, L_DIM, EMBED, HEADS, dropout=0.0, clamp=50000.0).eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


def inputs(batch: int = 2, n_v: int = 10, n_l: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, n_v, V_DIM, generator=g)
    l = torch.randn(batch, n_l, L_DIM, generator=g)
    mask = torch.ones(batch, n_l, dtype=torch.long)
    mask[:, n_l - 2:] = 0  # padded text slots
    if batch > 1:
        mask[1, 2:] = 0  # rows differ in their real length
    return v, l, mask


def with_tokens(layer: BiMultiHeadAttention, visible: bool = False, init: str = "uniform") -> ProjectedPrototypeTokens:
    torch.manual_seed(5)
    layer.token_extension = ProjectedPrototypeTokens(layer.v_proj, layer.l_proj, K, init, visible)
    return layer.token_extension


def test_masked_text_prompts_leave_the_image_branch_unchanged_and_move_the_text_branch():
    layer = fusion_layer()
    v, l, mask = inputs()
    base_v, base_l = layer(v, l, mask)
    with_tokens(layer, visible=False)
    out_v, out_l = layer(v, l, mask)
    assert out_v.shape == base_v.shape and out_l.shape == base_l.shape
    # P_l is masked (weight exactly 0) and P_v's query rows are dropped; the softmax row is K entries
    # longer, so its vectorised sum may round differently in the last bit
    torch.testing.assert_close(out_v, base_v, rtol=0, atol=1e-6)
    assert not torch.allclose(out_l, base_l)

    with_tokens(layer, visible=True)
    visible_v, _ = layer(v, l, mask)
    assert not torch.allclose(visible_v, base_v)


def test_cached_pseudo_inverse_and_the_reprojection_is_a_projector_onto_col_w():
    layer = fusion_layer()
    ext = with_tokens(layer)
    assert torch.equal(ext.pinv_v, torch.linalg.pinv(layer.v_proj.weight.t()))
    assert torch.equal(ext.pinv_l, torch.linalg.pinv(layer.l_proj.weight.t()))
    assert "pinv_v" not in ext.state_dict() and not ext.pinv_v.requires_grad

    tokens = ext.prototype_tokens.detach()
    p_v, p_l = ext.projected()
    assert p_v.shape == (K, V_DIM) and p_l.shape == (K, L_DIM)
    for proj, p in ((layer.v_proj, p_v), (layer.l_proj, p_l)):
        basis, _ = torch.linalg.qr(proj.weight.double())  # orthonormal basis of col(W), [E, d]
        centred = (tokens - proj.bias).double()
        expected = centred @ basis @ basis.t() + proj.bias.double()
        torch.testing.assert_close(proj(p).double(), expected, atol=1e-4, rtol=1e-4)
        assert (proj(p) - tokens).norm() > 0.5 * tokens.norm()  # a projection, not the identity (W is tall)


def test_cache_follows_new_projection_weights_and_dtype():
    layer = fusion_layer()
    ext = with_tokens(layer)
    new_weights = fusion_layer(seed=3).state_dict()
    layer.load_state_dict(new_weights, strict=False)
    p_v, _ = ext.projected()
    assert torch.equal(ext.pinv_v, torch.linalg.pinv(new_weights["v_proj.weight"].t()))
    layer.double()
    p_v64, _ = ext.projected()
    assert ext.pinv_v.dtype == torch.float64 and p_v64.dtype == torch.float64  # never below float32, wider with the model
    torch.testing.assert_close(p_v64.float(), p_v)


@pytest.mark.parametrize("visible", [False, True])
def test_each_row_of_a_batch_matches_running_it_alone(visible):
    layer = fusion_layer()
    with_tokens(layer, visible=visible)
    v, l, mask = inputs(batch=3)
    batch_v, batch_l = layer(v, l, mask)
    for i in range(3):
        row_v, row_l = layer(v[i:i + 1], l[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(batch_v[i:i + 1], row_v, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(batch_l[i:i + 1], row_l, atol=1e-6, rtol=1e-6)


def test_gradient_reaches_the_tokens_only_through_the_image_projection_when_text_is_masked():
    for visible in (False, True):
        layer = fusion_layer()
        ext = with_tokens(layer, visible=visible)
        l_proj_before = layer.l_proj.weight.clone()
        v, l, mask = inputs()
        out_v, out_l = layer(v, l, mask)
        (out_v.square().sum() + out_l.square().sum()).backward()
        grad = ext.prototype_tokens.grad
        assert grad is not None and grad.abs().sum() > 0
        assert layer.l_proj.weight.grad is None and torch.equal(layer.l_proj.weight, l_proj_before)
        # T enters through P_v only <=> its gradient lies in col(W_v): no component outside it.
        basis, _ = torch.linalg.qr(layer.v_proj.weight)
        outside = grad - grad @ basis @ basis.t()
        if visible:
            assert outside.norm() > 1e-3 * grad.norm()
        else:
            assert outside.norm() <= 1e-5 * grad.norm()


def test_layer_subset_and_sharing_follow_the_formula(glip_a_factory):
    counts = {}
    for options in ({}, {"layers": [1]}, {"shared": True}, {"num_tokens": 7, "layers": [0, 1]}):
        model = glip_a_factory()
        method = build_method("sdpt", options)
        trainable = method.apply(model)
        layers = model.fusion_layers()
        width = layers[0].v_proj.out_features
        chosen = len(options.get("layers", layers)) if not options.get("shared") else 1
        formula = method.config.num_tokens * width * chosen
        assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model) == formula
        assert all(".token_extension." in name for name in trainable)
        counts[str(options)] = formula
        if options.get("layers") == [1]:
            assert layers[0].token_extension is None and layers[1].token_extension is not None
        if options.get("shared"):
            assert layers[0].token_extension.prototype_tokens is layers[1].token_extension.prototype_tokens
            assert sum(".token_extension." in key for key in model.state_dict()) == 1  # stored once
    assert counts["{}"] == 2 * counts["{'layers': [1]}"] == 2 * counts["{'shared': True}"]


def test_sdpt_head_trains_tokens_plus_the_head_group_only(glip_a_factory):
    model = glip_a_factory()
    method = build_method("sdpt-head")
    trainable = method.apply(model)
    groups = model.parameter_groups()
    tokens = {n for n in trainable if ".token_extension." in n}
    assert set(trainable) - tokens == set(groups["head"])
    assert not set(trainable) & set(groups["fusion"] + groups["text_encoder"] + groups["vision_backbone"] + groups["neck"])


@pytest.mark.parametrize("options", [{"layers": [2]}, {"layers": []}, {"layers": [0, 0]}, {"init": "xavier"}, {"num_tokens": 0}])
def test_bad_options_are_explained(options, glip_a_factory):
    with pytest.raises(BenchError, match="(?i)sdpt"):  # "sdpt option ..." when built, "SDPT ..." when installed
        build_method("sdpt", options).apply(glip_a_factory())


def test_pinv_from_tuned_follows_the_lora_update_and_base_keeps_the_pretrained_map(glip_a_factory):
    """``sdpt+lora``'s documented default maps the tokens through the pre-trained projections; with
    ``pinv_from="tuned"`` they go through ``W + s B A``, recomputed, and LoRA's B learns through them."""
    from bench.tuning.base import build_method

    options = {"sdpt.num_tokens": 3, "sdpt.layers": [0], "lora.rank": 2}
    base_model, tuned_model = glip_a_factory(), glip_a_factory()
    torch.manual_seed(0)
    build_method("sdpt+lora", options).apply(base_model)
    torch.manual_seed(0)
    build_method("sdpt+lora", {**options, "sdpt.pinv_from": "tuned"}).apply(tuned_model)
    base_ext = base_model.fusion_layers()[0].token_extension
    tuned_ext = tuned_model.fusion_layers()[0].token_extension
    for a, b in zip(base_ext.projected(), tuned_ext.projected()):  # B = 0: W + sBA = W
        assert torch.allclose(a, b, atol=1e-4)
    lora_b = [p for n, p in tuned_model.named_parameters() if "lora_B" in n and "dyhead_tower.0." in n]
    base_before = [t.detach().clone() for t in base_ext.projected()]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.1)
        for n, p in base_model.named_parameters():
            if "lora_B" in n and "dyhead_tower.0." in n:
                p.normal_(0, 0.1)
    moved = tuned_ext.projected()
    assert not torch.allclose(moved[0], base_ext.projected()[0], atol=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(base_before, base_ext.projected()))  # base: the pre-trained map
    sum(p.square().sum() for p in moved).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
