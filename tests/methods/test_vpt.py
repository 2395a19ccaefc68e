"""VPT in the Swin backbone: parameter formula, the three modes, any input size, gradients, batches."""

from __future__ import annotations

import pytest
import torch

from bench.data.transforms import pad_batch
from bench.errors import BenchError
from bench.tuning.base import build_method
from bench.tuning.state import load_tuned, save_tuned
from methods.vpt import SharedPromptTokens


def prompted(model):
    """The prompt parameters by block index (shared ones appear under every block that uses them)."""
    return {b.index: b.module.extra_tokens for b in model.vision_blocks() if b.module.extra_tokens is not None}


def odd_sized_images(*sizes):
    """Padded batch of random images whose sizes are neither square nor multiples of the window."""
    generator = torch.Generator().manual_seed(0)
    return pad_batch([torch.rand(3, h, w, generator=generator) for h, w in sizes])[0]


def stage_width(blocks, stage):
    """The channel width of ``stage``'s blocks."""
    return next(b.channels for b in blocks if b.stage == stage)


@pytest.mark.parametrize(
    ("options", "widths"),
    [
        ({}, lambda blocks: [b.channels for b in blocks]),
        ({"mode": "shallow"}, lambda blocks: [blocks[0].channels]),
        ({"mode": "shallow", "stages": [3, 2]}, lambda blocks: [stage_width(blocks, 2)]),
        ({"mode": "per-stage"}, lambda blocks: list({b.stage: b.channels for b in blocks}.values())),
        ({"stages": [1, 3]}, lambda blocks: [b.channels for b in blocks if b.stage in (1, 3)]),
        ({"mode": "per-stage", "stages": [0, 2], "num_tokens": 3}, lambda blocks: [stage_width(blocks, 0), stage_width(blocks, 2)]),
    ],
)
def test_parameter_count_follows_the_formula(options, widths, glip_a_factory):
    model = glip_a_factory()
    method = build_method("vpt", options)
    trainable = method.apply(model)
    expected = method.config.num_tokens * sum(widths(model.vision_blocks()))
    assert sum(p.numel() for p in trainable.values()) == expected == method.expected_trainable(model)
    assert all(".extra_tokens." in name for name in trainable)


def test_deep_prompts_are_per_block_with_each_stage_width(glip_a_factory):
    model = glip_a_factory()
    build_method("vpt", {"num_tokens": 4, "stages": [0, 2, 3]}).apply(model)
    slots = prompted(model)
    x_width = {b.index: b.channels for b in model.vision_blocks()}
    assert sorted(slots) == [b.index for b in model.vision_blocks() if b.stage in (0, 2, 3)]
    assert len({id(s.tokens) for s in slots.values()}) == len(slots)  # independent sets
    for index, slot in slots.items():
        assert slot.tokens.shape == (4, x_width[index])
        assert slot(torch.zeros(2, 5, x_width[index])).shape == (2, 4, x_width[index])
    assert {b.channels for b in model.vision_blocks() if b.index in slots} == {24, 96, 192}  # fixture A widths


@pytest.mark.parametrize(("stages", "first_stage"), [(None, 0), ([2, 3], 2)])
def test_shallow_prompts_only_the_first_prompted_block(stages, first_stage, glip_a_factory):
    """VPT-shallow (VPT paper §3.2): one prompt set, in the first layer only."""
    model = glip_a_factory()
    trainable = build_method("vpt", {"mode": "shallow", "num_tokens": 4, "stages": stages}).apply(model)
    first = next(b for b in model.vision_blocks() if b.stage == first_stage)
    assert sorted(prompted(model)) == [first.index]
    [tokens] = trainable.values()
    assert tokens is first.module.extra_tokens.tokens and tokens.shape == (4, first.channels)


def test_per_stage_shares_one_set_per_stage_and_stores_it_once(glip_a_factory, tmp_path):
    model = glip_a_factory()
    method = build_method("vpt", {"mode": "per-stage"})
    trainable = method.apply(model)
    stages = {b.stage for b in model.vision_blocks()}
    assert len(trainable) == len(stages)
    assert len([k for k in model.state_dict() if ".extra_tokens." in k]) == len(stages)  # no aliased keys
    for stage in stages:
        blocks = [b for b in model.vision_blocks() if b.stage == stage]
        x = torch.randn(1, 9, blocks[0].channels)
        assert all(isinstance(b.module.extra_tokens, SharedPromptTokens) for b in blocks[1:])
        assert all(torch.equal(b.module.extra_tokens(x), blocks[0].module.extra_tokens(x)) for b in blocks)

    images = odd_sized_images((100, 150))
    with torch.no_grad():
        for parameter in trainable.values():
            parameter.add_(0.1)
        expected = model.backbone(images)
    path = save_tuned(tmp_path / "vpt-per-stage.safetensors", model, method, trainable)
    restored = glip_a_factory()
    load_tuned(path, restored)
    with torch.no_grad():
        for a, b in zip(expected, restored.backbone(images)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["deep", "shallow", "per-stage"])
def test_any_input_size_works_and_every_prompt_gets_a_gradient(mode, glip_a_factory):
    images = odd_sized_images((100, 150))  # padded to 128x160: 32x40 tokens, not multiples of the 7x7 window
    model = glip_a_factory()
    with torch.no_grad():
        base = model.backbone(images)
    trainable = build_method("vpt", {"mode": mode}).apply(model)
    pyramid = model.backbone(images)
    assert [p.shape for p in pyramid] == [p.shape for p in base]
    assert not all(torch.equal(a, b) for a, b in zip(pyramid, base))
    sum(level.square().mean() for level in pyramid).backward()
    for name, parameter in trainable.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_batch_of_three_matches_each_image_alone(glip_a_factory):
    model = glip_a_factory()
    build_method("vpt", {"num_tokens": 5}).apply(model)
    images = odd_sized_images((100, 150), (120, 90), (64, 200))
    with torch.no_grad():
        batch = model.backbone(images)
        alone = model.backbone(images[1:2])
    for level_batch, level_alone in zip(batch, alone):
        torch.testing.assert_close(level_batch[1:2], level_alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "wide"}, "mode must be one of"),
        ({"init": "ones"}, "init must be one of"),
        ({"num_tokens": 0}, "num_tokens must be an integer >= 1"),
        ({"stages": []}, "stages must be a non-empty list"),
    ],
)
def test_bad_options_are_explained(options, message):
    with pytest.raises(BenchError, match=message):
        build_method("vpt", options)


def test_missing_stage_is_explained(glip_a_factory):
    with pytest.raises(BenchError, match=r"stages \[7\] do not exist; this backbone has stages \[0, 1, 2, 3\]"):
        build_method("vpt", {"stages": [7]}).apply(glip_a_factory())
