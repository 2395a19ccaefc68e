"""Activation checkpointing recomputes modules in the backward pass and changes no number.

For each level a training step is run on fixture A's GLIP (official-code weights, deformable DyHead,
GLIP-T's fusion dropout so that random masks must be replayed) and on the tiny Grounding DINO:
losses must be equal and gradients equal up to float32 rounding, and forward-call counts show which
modules ran twice (once forward, once recomputed).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import get_args

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from bench.data.prompts import PromptClass, build_prompt
from bench.models.base import CHECKPOINTING_LEVELS
from bench.models.glip.model import GLIP
from bench.models.glip.fusion import VLFuse
from bench.models.glip.swin import SwinTransformerBlock
from bench.models.glip.dyconv import DyConv
from bench.train.protocol import PROTOCOLS, Checkpointing
from bench.tuning.base import build_method
from tests.grounding_dino_support import tiny_task

GRAD_TOL = dict(rtol=1e-5, atol=1e-7)
FIXTURE_CLASSES = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]


def counting_calls(model: torch.nn.Module, kinds: tuple[type, ...]) -> Counter:
    """Count forward calls per module class of ``kinds`` (pre-hooks, kept on the model: a recomputation
    stops as soon as it has what backward needs, so it may never reach a module's forward hooks)."""
    calls: Counter = Counter()
    for module in model.modules():
        if isinstance(module, kinds):
            module.register_forward_pre_hook(lambda m, _i: calls.update([type(m).__name__]))
    return calls


def step(model, inputs, seed: int = 0) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    losses = model(*inputs)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.fixture(scope="module")
def glip_runs(fixture_a_dir, fixture_a_reference, glip_a_factory):
    """``{(method, level): (losses, grads, forward calls)}`` on fixture A with fusion dropout 0.1."""
    runs = {}
    for method in ("everything", "sdpt"):
        for level in CHECKPOINTING_LEVELS:
            model = glip_a_factory()
            config = dataclasses.replace(model.config, fusion=dataclasses.replace(model.config.fusion, dropout=0.1))
            rebuilt = GLIP(config, model.tokenizer)
            rebuilt.load_state_dict(model.state_dict())
            torch.manual_seed(0)
            if method == "everything":
                rebuilt.requires_grad_(True)
            else:
                build_method(method).apply(rebuilt)
            rebuilt.train()
            rebuilt.set_activation_checkpointing(level)
            calls = counting_calls(rebuilt, (VLFuse, DyConv, SwinTransformerBlock))
            targets = [{"boxes": fixture_a_reference["train.target0.boxes_resized_xyxy"],
                        "labels": fixture_a_reference["train.target0.labels"]}]
            inputs = (fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"],
                      build_prompt(FIXTURE_CLASSES, rebuilt.tokenizer), targets)
            losses, grads = step(rebuilt, inputs)
            runs[method, level] = (losses, grads, calls)
    return runs


@pytest.mark.parametrize("method", ["everything", "sdpt"])
@pytest.mark.parametrize("level", ["official", "all"])
def test_glip_checkpointing_keeps_losses_and_gradients(glip_runs, method, level):
    losses, grads, _ = glip_runs[method, level]
    expected_losses, expected_grads, _ = glip_runs[method, "off"]
    assert losses.keys() == expected_losses.keys()
    assert all(torch.equal(losses[k], expected_losses[k]) for k in losses), (losses, expected_losses)
    assert grads.keys() == expected_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], **GRAD_TOL, msg=lambda m: f"{name}: {m}")


def test_glip_levels_recompute_what_they_say(glip_runs):
    off, official, everything = (glip_runs["everything", level][2] for level in CHECKPOINTING_LEVELS)
    # official: the fusion blocks' attention runs again in backward; the VLFuse hook sees one call
    # (its inner block is what is recomputed), the DyConvs and Swin blocks run once
    assert official == off
    # all: every tower module and every Swin block runs twice
    assert everything == Counter({name: 2 * count for name, count in off.items()})
    # a frozen backbone (sdpt) has nothing to recompute: its Swin blocks run once
    sdpt_off, sdpt_all = glip_runs["sdpt", "off"][2], glip_runs["sdpt", "all"][2]
    assert sdpt_all["SwinTransformerBlock"] == sdpt_off["SwinTransformerBlock"]
    assert sdpt_all["DyConv"] == 2 * sdpt_off["DyConv"]


def test_official_recomputes_the_fusion_attention(glip_a_factory, fixture_a_reference):
    calls = {}
    for level in ("off", "official"):
        model = glip_a_factory().train().requires_grad_(True)
        model.set_activation_checkpointing(level)
        counter = counting_calls(model, (type(model.rpn.head.dyhead_tower[0].b_attn),))
        targets = [{"boxes": fixture_a_reference["train.target0.boxes_resized_xyxy"],
                    "labels": fixture_a_reference["train.target0.labels"]}]
        step(model, (fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"],
                     build_prompt(FIXTURE_CLASSES, model.tokenizer), targets))
        calls[level] = sum(counter.values())
    assert calls["official"] == 2 * calls["off"] > 0


def test_grounding_dino_all_keeps_fewer_activations_with_the_same_numbers(grounding_dino_factory):
    """transformers checkpoints a layer's ``forward`` inside its hooks, so the recomputation is seen in
    what the forward pass keeps for backward: the tensors autograd saves outside checkpointed layers."""
    results = {}
    for level in ("off", "all"):
        model = grounding_dino_factory().train().requires_grad_(True)
        model.set_activation_checkpointing(level)
        images, sizes, targets, prompt = tiny_task(model)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            losses, grads = step(model, (images, sizes, prompt, targets))
        results[level] = (losses, grads, sum(saved))
    (losses, grads, kept), (expected_losses, expected_grads, expected_kept) = results["all"], results["off"]
    assert kept < 0.9 * expected_kept
    assert all(torch.equal(losses[k], expected_losses[k]) for k in expected_losses)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], **GRAD_TOL, msg=lambda m: f"{name}: {m}")


def test_protocols_name_only_known_levels():
    assert get_args(Checkpointing) == CHECKPOINTING_LEVELS
    assert PROTOCOLS.get("glip-odinw").activation_checkpointing == "official"
    assert PROTOCOLS.get("shapes").activation_checkpointing == "off"
    with pytest.raises(ValueError, match="activation checkpointing"):
        GLIP.set_activation_checkpointing(None, "some")  # type: ignore[arg-type]
