"""GLIP's Swin + FPN backbone against the official code (parity fixture A), its state-dict layout
for the full-size GLIP-T/L, and the visual-prompt slot of every Swin block."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.models.glip.backbone import GlipBackbone
from bench.models.glip.config import GLIP_L, GLIP_T, GlipConfig, from_reduced_config
from bench.models.glip.fpn import DropBlock2D
from bench.models.glip.swin import SHIFT_MASK_VALUE, WindowAttention, shifted_window_mask

PREFIX = "backbone."
FEATURE_TOL = dict(atol=1e-4, rtol=1e-4)  # above the official code's run-to-run spread (tests/fixtures/README.md)
STAGE_KEYS = [f"eval.backbone.body.stage{i}" for i in range(2, 6)]
LEVEL_KEYS = [f"eval.backbone.fpn.P{level}" for level in range(3, 8)]


@pytest.fixture(scope="module")
def config_a(fixture_a_dir) -> GlipConfig:
    return from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")


@pytest.fixture(scope="module")
def backbone_weights(fixture_a_dir) -> dict[str, torch.Tensor]:
    state = torch.load(fixture_a_dir / "glip_reduced_A.pth", weights_only=True)["model"]
    prefix = "module." + PREFIX
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture()
def backbone(config_a, backbone_weights) -> GlipBackbone:
    model = GlipBackbone.from_config(config_a)
    model.load_state_dict(backbone_weights, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def images(fixture_a_reference) -> torch.Tensor:
    return fixture_a_reference["input.images_padded"]


def _max_diffs(outputs: list[torch.Tensor], reference: dict, keys: list[str], row: int = 0) -> dict[str, float]:
    return {key: (out[row : row + 1] - reference[key]).abs().max().item() for out, key in zip(outputs, keys)}


def _assert_matches(outputs: list[torch.Tensor], reference: dict, keys: list[str], row: int = 0) -> None:
    for out, key in zip(outputs, keys):
        torch.testing.assert_close(out[row : row + 1], reference[key], **FEATURE_TOL, msg=lambda m, k=key: f"{k}: {m}")


# --- parity with the official code -------------------------------------------------------------


def test_stages_and_pyramid_match_official(backbone, images, fixture_a_reference):
    with torch.no_grad():
        features = backbone.features(images)
    print("max abs diff:", _max_diffs(features.stages, fixture_a_reference, STAGE_KEYS)
          | _max_diffs(features.pyramid, fixture_a_reference, LEVEL_KEYS))
    _assert_matches(features.stages, fixture_a_reference, STAGE_KEYS)
    _assert_matches(features.pyramid, fixture_a_reference, LEVEL_KEYS)


def test_forward_returns_the_pyramid(backbone, images, fixture_a_reference):
    with torch.no_grad():
        pyramid = backbone(images)
    assert len(pyramid) == 5
    _assert_matches(pyramid, fixture_a_reference, LEVEL_KEYS)


def test_each_image_of_a_batch_matches_official(backbone, images, fixture_a_reference):
    with torch.no_grad():
        features = backbone.features(torch.cat([images, images]))
    for row in (0, 1):
        _assert_matches(features.stages, fixture_a_reference, STAGE_KEYS, row)
        _assert_matches(features.pyramid, fixture_a_reference, LEVEL_KEYS, row)


@pytest.mark.parametrize("size", [(100, 130), (128, 160), (97, 61)])
def test_any_input_size_runs_with_ceil_strides(backbone, size):
    h, w = size
    with torch.no_grad():
        features = backbone.features(torch.randn(1, 3, h, w))
    expected = [(-(-h // 4)), (-(-w // 4))]
    for stage in features.stages:
        assert list(stage.shape[-2:]) == expected
        expected = [(expected[0] + 1) // 2, (expected[1] + 1) // 2]
    assert [p.shape[-2:] for p in features.pyramid[:3]] == [s.shape[-2:] for s in features.stages[1:]]
    for finer, coarser in zip(features.pyramid[2:], features.pyramid[3:]):
        assert list(coarser.shape[-2:]) == [(finer.shape[-2] + 1) // 2, (finer.shape[-1] + 1) // 2]
    assert all(torch.isfinite(p).all() for p in features.pyramid)


def test_bf16_autocast_runs_and_is_finite(backbone, images):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone.features(images)
    assert all(torch.isfinite(t.float()).all() for t in features.stages + features.pyramid)


# --- state-dict layout of the released models ----------------------------------------------------


def _manifest_rows(path: Path) -> dict[str, tuple[list[int], str, str]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("module." + PREFIX):
            key, shape, dtype, kind = line.split("\t")
            rows[key[len("module." + PREFIX):]] = (json.loads(shape), dtype, kind)
    return rows


@pytest.mark.parametrize("config, manifest", [(GLIP_T, "glip_manifest_T.tsv"), (GLIP_L, "glip_manifest_L.tsv")])
def test_full_size_keys_and_shapes_match_official_manifest(fixtures_dir, config, manifest):
    with torch.device("meta"):
        model = GlipBackbone.from_config(config)
    params = dict(model.named_parameters())
    ours = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."), "param" if k in params else "buffer")
        for k, v in model.state_dict().items()
    }
    expected = _manifest_rows(fixtures_dir / manifest)
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


# --- regularisers act in training only ----------------------------------------------------------


def test_drop_path_rates_rise_linearly_and_act_only_in_training(config_a, images):
    config = dataclasses.replace(config_a, swin=dataclasses.replace(config_a.swin, drop_path_rate=0.7))
    model = GlipBackbone.from_config(config)
    rates = [block.module.drop_path.p for block in model.vision_blocks()]
    assert rates == pytest.approx(torch.linspace(0, 0.7, len(rates)).tolist())
    torch.manual_seed(0)
    with torch.no_grad():
        trained, evaluated, again = model.train()(images), model.eval()(images), model(images)
    assert torch.equal(evaluated[0], again[0])
    assert not torch.allclose(trained[0], evaluated[0])


def test_drop_block_zeroes_blocks_shared_by_channels_and_rescales():
    drop = DropBlock2D(prob=0.5, block_size=3)
    x = torch.ones(2, 4, 12, 12)
    assert drop.eval()(x) is x
    torch.manual_seed(0)
    out = drop.train()(x)
    zeros = out == 0
    assert zeros.any() and (~zeros).any()
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # one mask for all channels
    kept = out[~zeros]
    assert torch.allclose(kept, torch.full_like(kept, x.numel() / (~zeros).sum().item()))
    assert DropBlock2D(0.0, 3).train()(x) is x


def test_shift_mask_uses_official_value():
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, SHIFT_MASK_VALUE}
    assert (mask[0] == 0).all()  # the top-left window holds one region only


# --- visual-prompt slot (VPT) -------------------------------------------------------------------


class _Prompts(nn.Module):
    """Learnable prompts [P, C] expanded to the batch of the block's input."""

    def __init__(self, count: int, channels: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(count, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens.expand(x.shape[0], -1, -1)


def test_blocks_are_listed_in_order_with_stage_and_width(backbone, config_a):
    blocks = backbone.vision_blocks()
    assert len(blocks) == sum(config_a.swin.depths)
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert [b.stage for b in blocks] == [i for i, d in enumerate(config_a.swin.depths) for _ in range(d)]
    assert [b.channels for b in blocks] == [config_a.swin.stage_channels[b.stage] for b in blocks]
    assert all(b.module.extra_tokens is None for b in blocks)


def test_prompts_change_the_output_and_receive_gradients(backbone, images):
    with torch.no_grad():
        plain = backbone(images)
    prompts = [_Prompts(3, block.channels) for block in backbone.vision_blocks()]
    for block, prompt in zip(backbone.vision_blocks(), prompts):
        block.module.extra_tokens = prompt
    prompted = backbone.features(images)
    assert [p.shape for p in prompted.pyramid] == [p.shape for p in plain]
    assert not torch.allclose(prompted.pyramid[0], plain[0])
    sum(p.sum() for p in prompted.pyramid).backward()
    # shifted blocks (odd ones) included: prompts are never masked
    assert all(p.tokens.grad is not None and p.tokens.grad.abs().sum() > 0 for p in prompts)


def test_emptying_the_slot_restores_the_exact_computation(backbone, images):
    with torch.no_grad():
        plain = backbone(images)
        for block in backbone.vision_blocks():
            block.module.extra_tokens = _Prompts(2, block.channels)
        backbone(images)
        for block in backbone.vision_blocks():
            block.module.extra_tokens = None
        again = backbone(images)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))


def test_prompts_of_the_wrong_width_are_reported(backbone, images):
    block = backbone.vision_blocks()[0]
    block.module.extra_tokens = lambda x: torch.zeros(x.shape[0], 2, block.channels + 1)
    with pytest.raises(BenchError, match=rf"expected \[batch=1, P, {block.channels}\]"):
        backbone(images)


class _InputDependentPrompts(nn.Module):
    """Prompts that differ per image, so a mix-up between images of a batch would show."""

    def __init__(self, count: int, channels: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(count, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens + x.mean(dim=1, keepdim=True)


def test_prompts_stay_with_their_image_in_a_batch(backbone, images):
    for block in backbone.vision_blocks():
        block.module.extra_tokens = _InputDependentPrompts(2, block.channels)
    with torch.no_grad():
        alone = backbone(images)
        batched = backbone(torch.cat([images, images.flip(-1)]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert all(torch.isfinite(p.float()).all() for p in backbone(images))
    for a, b in zip(alone, batched):
        torch.testing.assert_close(b[:1], a, **FEATURE_TOL)


def test_window_attention_treats_prompts_as_unbiased_unmasked_keys():
    attn = WindowAttention(dim=8, window=2, num_heads=2).eval()
    b, nw, n, p = 2, 3, 4, 5
    windows, prompts = torch.randn(b * nw, n, 8), torch.randn(b, p, 8)
    mask = torch.where(torch.rand(nw, n, n) < 0.5, SHIFT_MASK_VALUE, 0.0)
    with torch.no_grad():
        out = attn(windows, mask, prompts)
        q, k, v = attn.qkv(windows).view(b * nw, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
        _, k_p, v_p = attn.qkv(prompts).view(b, p, 3, 2, 4).permute(2, 0, 3, 1, 4)
        for i in range(b * nw):
            image, window = divmod(i, nw)
            logits_bias = torch.cat([attn.position_bias() + mask[window], torch.zeros(2, n, p)], dim=-1)
            expected = F.scaled_dot_product_attention(
                q[i], torch.cat([k[i], k_p[image]], 1), torch.cat([v[i], v_p[image]], 1), attn_mask=logits_bias
            )
            torch.testing.assert_close(out[i], attn.proj(expected.transpose(0, 1).reshape(n, 8)))
