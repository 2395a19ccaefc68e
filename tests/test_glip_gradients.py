"""GLIP's training step computes no gradient nobody asked for, and its numbers stay those of the plain ops.

Three shortcuts are checked against the plain computation they replace (switched back in by
monkeypatching): the fusion layer's row-max shift is taken as a constant (:func:`fusion.subtract_row_max`),
its ±clamp runs only where a logit lies outside it (:func:`fusion.clamp_where_binding`), and the
deformable DyConv's backward computes only the gradients asked for, with ``grid_sample``
(:func:`dyconv.modulated_deform_conv`). Forward
values must be bit-identical; gradients equal up to float32 rounding (``GRAD_TOL``, tighter where it
holds). Each test also checks, on the autograd graph, that the shortcut ran and the plain op did not.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torchvision.ops import DeformConv2d

import methods  # noqa: F401  (registers every method)
from bench.data.prompts import PromptClass, build_prompt
from bench.models.glip import dyconv, fusion
from bench.models.glip.checkpoint import load_official_checkpoint
from bench.models.glip.config import from_reduced_config
from bench.models.glip.fusion import BiMultiHeadAttention
from bench.models.glip.language import load_tokenizer
from bench.models.glip.model import GLIP
from bench.tuning.base import build_method

GRAD_TOL = dict(rtol=1e-5, atol=1e-6)
FLOAT64_TOL = dict(rtol=1e-10, atol=1e-12)
SAMPLED_DEFORM_NODE = "SampledDeformConvBackward"
FIXTURE_CLASSES = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]


@contextmanager
def plain_ops():
    """The implementation before the shortcuts: ``amax`` differentiated, the clamps always applied,
    torchvision's full backward."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "subtract_row_max", lambda x: x - x.amax(dim=-1, keepdim=True))
        patch.setattr(fusion, "clamp_where_binding", lambda x, bound: x.clamp(-bound, bound))
        patch.setattr(dyconv, "modulated_deform_conv", lambda conv, x, offset, mask: conv(x, offset, mask))
        yield


def graph_nodes(output: torch.Tensor) -> Counter:
    """How often each kind of autograd node occurs in the graph behind ``output``."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return Counter(node.name() for node in seen)


def assert_grads_close(actual: dict, expected: dict, tol: dict) -> None:
    """Close elementwise; ``atol`` is relative to the tensor's largest gradient when that exceeds 1 (a
    weight gradient sums many products, so its rounding grows with its scale, not its element)."""
    assert actual.keys() == expected.keys()
    for name in expected:
        scale = max(1.0, float(expected[name].abs().max()))
        torch.testing.assert_close(actual[name], expected[name], rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m: f"{name}: {m}")


# --- the deformable convolution's sampled backward --------------------------------------------


def deform_case(dtype: torch.dtype, stride: int, trained: tuple[str, ...]):
    """A DeformConv2d (its weight and bias trained as ``trained`` says) and inputs whose offsets reach
    past the image border (zero padding)."""
    generator = torch.Generator().manual_seed(0)
    conv = DeformConv2d(8, 6, kernel_size=3, stride=stride, padding=1).to(dtype).requires_grad_(False)
    conv.bias.requires_grad_("bias" in trained)
    conv.weight.requires_grad_("weight" in trained)
    size, out = 7, (7 - 1) // stride + 1
    inputs = {
        "x": torch.randn(2, 8, size, size, generator=generator, dtype=dtype),
        "offset": 3 * torch.randn(2, 18, out, out, generator=generator, dtype=dtype),
        "mask": torch.rand(2, 9, out, out, generator=generator, dtype=dtype),
    }
    for name, tensor in inputs.items():
        tensor.requires_grad_(name in trained)
    return conv, inputs, torch.randn(2, 6, out, out, generator=generator, dtype=dtype)


def deform_step(conv, inputs, grad_out) -> tuple[torch.Tensor, dict]:
    """The output and the gradients of every tensor that requires one."""
    out = dyconv.modulated_deform_conv(conv, inputs["x"], inputs["offset"], inputs["mask"])
    leaves = {name: t for name, t in {**inputs, "bias": conv.bias, "weight": conv.weight}.items() if t.requires_grad}
    return out, dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad_out)))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, FLOAT64_TOL), (torch.float32, GRAD_TOL)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("trained", [("x", "offset", "mask"), ("x", "bias"), ("offset",), ("bias",), ("weight",),
                                     ("x", "offset", "mask", "weight", "bias")], ids="+".join)
def test_sampled_deform_conv_keeps_torchvision_values_and_gradients(dtype, tol, stride, trained):
    conv, inputs, grad_out = deform_case(dtype, stride, trained)
    out, grads = deform_step(conv, inputs, grad_out)
    with plain_ops():
        expected_out, expected = deform_step(conv, inputs, grad_out)
    assert graph_nodes(out)[SAMPLED_DEFORM_NODE] == 1 and graph_nodes(expected_out)[SAMPLED_DEFORM_NODE] == 0
    assert torch.equal(out, expected_out)
    assert_grads_close(grads, expected, tol)


def test_no_grad_mode_keeps_torchvision_op():
    conv, inputs, _ = deform_case(torch.float32, 1, ("x", "weight"))
    with torch.no_grad():
        assert dyconv.modulated_deform_conv(conv, *inputs.values()).grad_fn is None


# --- the fusion layer's row-max shift -----------------------------------------------------------


def test_fusion_row_max_shift_is_a_constant_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    layer = BiMultiHeadAttention(v_dim=16, l_dim=12, embed_dim=32, num_heads=4, dropout=0.0, clamp=50000.0).train()
    v, l = torch.randn(2, 30, 16, requires_grad=True), torch.randn(2, 7, 12, requires_grad=True)
    text_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    grad_v, grad_l = torch.randn(2, 30, 16), torch.randn(2, 7, 12)

    def run():
        outputs = layer(v, l, text_mask)
        nodes = graph_nodes(outputs[1])
        return outputs, nodes, torch.autograd.grad(outputs, [v, l, *layer.parameters()], (grad_v, grad_l))

    (out_v, out_l), nodes, grads = run()
    with plain_ops():
        (expected_v, expected_l), expected_nodes, expected = run()
    assert nodes["AmaxBackward0"] == 0 and expected_nodes["AmaxBackward0"] == 1
    assert torch.equal(out_v, expected_v) and torch.equal(out_l, expected_l)
    assert_grads_close(dict(enumerate(grads)), dict(enumerate(expected)), GRAD_TOL)


@pytest.mark.parametrize("input_scale, clamps", [(1.0, 0), (300.0, 2)])
def test_fusion_clamp_runs_only_where_a_logit_is_out_of_bounds(input_scale, clamps):
    """Inputs of unit size keep the logits far inside a bound of 50 (no clamp runs); inputs 300x
    larger push them past it on both sides, and then both official clamps run, with their values."""
    torch.manual_seed(0)
    layer = BiMultiHeadAttention(v_dim=16, l_dim=12, embed_dim=32, num_heads=4, dropout=0.0, clamp=50.0).train()
    v = (input_scale * torch.randn(2, 30, 16)).requires_grad_(True)
    l = (input_scale * torch.randn(2, 7, 12)).requires_grad_(True)
    text_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    grad_v, grad_l = torch.randn(2, 30, 16), torch.randn(2, 7, 12)

    def run():
        outputs = layer(v, l, text_mask)
        return outputs, graph_nodes(outputs[1]), torch.autograd.grad(outputs, [v, l, *layer.parameters()], (grad_v, grad_l))

    (out_v, out_l), nodes, grads = run()
    with plain_ops():
        (expected_v, expected_l), expected_nodes, expected = run()
    assert nodes["ClampBackward1"] == clamps and expected_nodes["ClampBackward1"] == 2
    assert torch.equal(out_v, expected_v) and torch.equal(out_l, expected_l)
    assert_grads_close(dict(enumerate(grads)), dict(enumerate(expected)), GRAD_TOL)


# --- one GLIP training step ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def glip_a_weights(fixture_a_dir):
    """Fixture A's small GLIP (deformable DyHead, official-code weights) with GLIP-T's fusion dropout
    0.1, so that dropout runs in the step; its tokenizer and its state dict."""
    config = from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")
    config = dataclasses.replace(config, fusion=dataclasses.replace(config.fusion, dropout=0.1))
    tokenizer = load_tokenizer(fixture_a_dir / "bert_local")
    model = GLIP(config, tokenizer)
    load_official_checkpoint(model, fixture_a_dir / "glip_reduced_A.pth")
    return config, tokenizer, model.state_dict()


def training_step(model, inputs) -> tuple[dict, dict, Counter]:
    """One seeded training forward and backward: the losses, the trainable parameters' gradients and
    the autograd graph's node counts."""
    torch.manual_seed(0)  # the same dropout masks in both runs
    model.zero_grad(set_to_none=True)
    losses = model(*inputs)
    total = sum(losses.values())
    nodes = graph_nodes(total)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads, nodes


def tuned_glip_a(glip_a_weights, method: str) -> GLIP:
    """Fixture A's GLIP in training mode with ``method`` applied ("everything": every parameter trains)."""
    config, tokenizer, weights = glip_a_weights
    model = GLIP(config, tokenizer)
    model.load_state_dict(weights)
    torch.manual_seed(0)  # the method's own initialisation
    if method == "everything":
        model.requires_grad_(True)
    else:
        build_method(method).apply(model)
    return model.train()


def fixture_a_batch(reference: dict, tokenizer) -> tuple:
    """``model(...)``'s arguments for fixture A's training image: images, sizes, prompt, targets."""
    targets = [{"boxes": reference["train.target0.boxes_resized_xyxy"], "labels": reference["train.target0.labels"]}]
    return (reference["input.images_padded"], reference["input.image_sizes_hw"],
            build_prompt(FIXTURE_CLASSES, tokenizer), targets)


# Every DyConv level runs 2 or 3 convolutions (5 levels: 3 * 5 - 2) in each of the 2 blocks. SDPT's
# gradients are of order 1e-4, so its absolute tolerance is scaled down with them.
@pytest.mark.parametrize("method, frozen_deform_convs, tol", [
    ("everything", 2 * (3 * 5 - 2), GRAD_TOL),
    ("sdpt", 2 * (3 * 5 - 2), dict(rtol=1e-6, atol=1e-10)),
    ("bitfit", 2 * (3 * 5 - 2), GRAD_TOL),
])
def test_training_step_has_the_same_loss_and_gradients(glip_a_weights, fixture_a_reference, method,
                                                       frozen_deform_convs, tol):
    model = tuned_glip_a(glip_a_weights, method)
    inputs = fixture_a_batch(fixture_a_reference, model.tokenizer)

    losses, grads, nodes = training_step(model, inputs)
    with plain_ops():
        expected_losses, expected_grads, expected_nodes = training_step(model, inputs)

    assert nodes[SAMPLED_DEFORM_NODE] == frozen_deform_convs and expected_nodes[SAMPLED_DEFORM_NODE] == 0
    assert nodes["AmaxBackward0"] == 0 and expected_nodes["AmaxBackward0"] == model.config.dyhead.num_convs
    assert all(torch.equal(losses[k], expected_losses[k]) for k in expected_losses), (losses, expected_losses)
    assert grads and any(g.abs().sum() > 0 for g in grads.values())
    assert_grads_close(grads, expected_grads, tol)
