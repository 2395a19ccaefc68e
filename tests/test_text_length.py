"""Text only as long as it is: GLIP pads a batch's captions to the longest one (plus the tokens a text
hook inserts, rounded up to a multiple of 8) instead of to all 256 text slots, and every output, loss
and gradient stays the one of the padded text within float rounding.

Runs on the fixture-A GLIP (the official code's weights, 256 text slots). Captions are the fixture's
three classes followed by more names, so the targets' labels 1..3 belong to every caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from bench.data.prompts import Prompt, PromptClass, build_prompt
from bench.errors import BenchError
from bench.models.base import TEXT_LENGTH_MULTIPLE
from bench.models.glip.anchors import grid_anchors
from bench.models.glip.atss_assignment import ImageTargets, no_object_row
from bench.models.glip.atss_loss import atss_losses
from bench.models.glip.model import GLIP
from bench.models.glip.parity import BOXES, GRADS, LOSSES, SCORES, Tolerance
from bench.tuning.base import METHODS, build_method

NAMES = ["red square", "blue circle", "green triangle", "yellow star", "purple hexagon", "orange moon", "pink cone",
         "white cube", "black ring", "gray disk"]

# Bounds: the parity tolerances against the official code. Seen on this model (CPU, float32):
# detections and losses bit-identical, gradients within 1.2e-7 (sums over more or fewer rows).


def close(ours: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> bool:
    return torch.allclose(ours, reference, rtol=tolerance.rtol, atol=tolerance.atol)


@dataclass
class Batch:
    """Images with one caption each and the targets of the fixture's three boxes."""

    name: str
    images: torch.Tensor
    sizes: torch.Tensor
    prompts: list[Prompt]
    targets: list[dict[str, torch.Tensor]]


def caption_of(classes: int, tokenizer) -> Prompt:
    return build_prompt([PromptClass(i, name) for i, name in enumerate(NAMES[:classes], start=1)], tokenizer)


@pytest.fixture(scope="module")
def batches(glip_a_factory, fixture_a_reference) -> list[Batch]:
    """One image with a short caption; two images with captions of 10 and 23 tokens; two images whose
    longest caption is 32 tokens, a multiple of 8, so that its [SEP] takes the text's last slot."""
    tokenizer = glip_a_factory().tokenizer
    reference = fixture_a_reference
    image, sizes = reference["input.images_padded"], reference["input.image_sizes_hw"]
    target = {"boxes": reference["train.target0.boxes_resized_xyxy"], "labels": reference["train.target0.labels"]}
    pair = torch.cat([image, image.flip(-1)])
    made = [
        Batch("3 classes", image, sizes, [caption_of(3, tokenizer)], [target]),
        Batch("3 and 7 classes", pair, sizes.repeat(2, 1), [caption_of(3, tokenizer), caption_of(7, tokenizer)], [target] * 2),
        Batch("10 and 3 classes", pair, sizes.repeat(2, 1), [caption_of(10, tokenizer), caption_of(3, tokenizer)], [target] * 2),
    ]
    assert made[2].prompts[0].num_tokens % TEXT_LENGTH_MULTIPLE == 0  # the case the last batch is there for
    return made


def longest(batch: Batch) -> int:
    return max(p.num_tokens for p in batch.prompts)


def text_length(model, batch: Batch, padded: bool) -> int:
    model.pad_text_to_slots = padded
    return model.encode_text(batch.prompts).features.hidden.shape[1]


def detections(model, batch: Batch, padded: bool):
    model.pad_text_to_slots = padded
    model.eval()
    with torch.no_grad():
        return model(batch.images, batch.sizes, batch.prompts)


def training_step(model, batch: Batch, padded: bool, trainable: dict[str, torch.nn.Parameter]):
    """Losses of one training forward and the gradients of ``trainable`` after its backward."""
    model.pad_text_to_slots = padded
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(batch.images, batch.sizes, batch.prompts, batch.targets)
    total = sum(losses.values())
    if total.requires_grad:  # not for zero-shot, which trains nothing
        total.backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in trainable.items()}
    return {name: value.detach() for name, value in losses.items()}, grads


def test_text_is_as_long_as_the_longest_caption_rounded_up(glip_a_factory, batches):
    model = glip_a_factory()
    for batch in batches:
        expected = -(-longest(batch) // TEXT_LENGTH_MULTIPLE) * TEXT_LENGTH_MULTIPLE
        assert text_length(model, batch, padded=False) == expected < model.text_slots, batch.name
        assert text_length(model, batch, padded=True) == model.text_slots, batch.name
    assert [text_length(model, b, padded=False) for b in batches] == [16, 24, 32]


def test_text_makes_room_for_the_tokens_a_text_hook_inserts(glip_a_factory, batches):
    model = glip_a_factory()
    build_method("coop", {"context_tokens": 5}).apply(model)
    text = model.encode_text(batches[2].prompts).features
    assert text.hidden.shape[1] == 40  # 32 tokens + 5 context vectors, rounded up to 40
    assert text.mask.sum(1).tolist() == [p.num_tokens + 5 for p in batches[2].prompts]


def test_the_shorter_text_detects_what_the_padded_text_detects(glip_a_factory, batches):
    model = glip_a_factory()
    for batch in batches:
        padded, dynamic = detections(model, batch, padded=True), detections(model, batch, padded=False)
        assert sum(len(found.scores) for found in padded) > 0, batch.name
        for ours, reference in zip(dynamic, padded, strict=True):
            assert torch.equal(ours.labels, reference.labels), batch.name
            assert close(ours.scores, reference.scores, SCORES), batch.name
            assert close(ours.boxes, reference.boxes, BOXES), batch.name


def test_chunked_detection_with_shorter_text_matches_the_padded_text(glip_a_factory, batches):
    model = glip_a_factory()
    batch = batches[1]
    found = {}
    for padded in (True, False):
        model.pad_text_to_slots = padded
        found[padded] = model.detect(batch.images, batch.sizes, batch.prompts)
    for ours, reference in zip(found[False], found[True], strict=True):
        assert torch.equal(ours.labels, reference.labels)
        assert close(ours.scores, reference.scores, SCORES)


def test_the_shorter_text_gives_the_padded_training_losses(glip_a_factory, batches):
    model = glip_a_factory()
    for batch in batches:
        padded, _ = training_step(model, batch, padded=True, trainable={})
        dynamic, _ = training_step(model, batch, padded=False, trainable={})
        for name in padded:
            assert close(dynamic[name], padded[name], LOSSES), (batch.name, name)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_the_same_on_the_shorter_text(name, glip_a_factory, batches):
    model = glip_a_factory()
    torch.manual_seed(0)
    trainable = build_method(name).apply(model)
    batch = batches[2]
    padded_losses, padded_grads = training_step(model, batch, padded=True, trainable=trainable)
    losses, grads = training_step(model, batch, padded=False, trainable=trainable)
    assert text_length(model, batch, padded=False) < model.text_slots
    for loss in padded_losses:
        assert close(losses[loss], padded_losses[loss], LOSSES), loss
    assert grads.keys() == padded_grads.keys()
    for parameter, grad in grads.items():
        reference = padded_grads[parameter]
        assert (grad is None) == (reference is None), parameter
        # float rounding grows with the gradients' size (FourierFT's scaling 150 makes them ~80x LoRA's)
        scale = 1.0 if reference is None else max(1.0, float(reference.abs().max()))
        assert grad is None or torch.allclose(grad, reference, rtol=GRADS.rtol, atol=GRADS.atol * scale), parameter


def test_a_caption_longer_than_the_text_slots_is_still_refused(glip_a_factory):
    model = glip_a_factory()
    caption = build_prompt([PromptClass(i, "purple hexagon") for i in range(1, 100)], model.tokenizer, max_query_len=10**4)
    assert caption.num_tokens > model.text_slots
    with pytest.raises(BenchError, match="text slots"):
        model.encode_text([caption])
    fits = caption_of(10, model.tokenizer)
    build_method("coop", {"context_tokens": model.text_slots - fits.num_tokens + 1}).apply(model)
    with pytest.raises(BenchError, match="inserts .* more"):
        model.encode_text([fits])


def test_positive_maps_as_long_as_the_slots_are_refused_for_shorter_text(glip_a_factory, batches):
    model = glip_a_factory()
    batch = batches[0]
    text = model.encode_text(batch.prompts).features
    outputs, _ = model.predict(model.backbone(batch.images), text)
    anchors = grid_anchors(outputs.feature_sizes, model.config.anchors)
    labels = batch.targets[0]["labels"]
    slots_wide = ImageTargets(batch.targets[0]["boxes"], labels, batch.prompts[0].token_map(labels, model.text_slots))
    with pytest.raises(ValueError, match="length of the batch's text"):
        atss_losses(outputs, anchors, [slots_wide], text.mask, model.config.loss)


def test_the_no_object_token_stays_in_the_last_text_slot():
    """GLIP's negatives target the last of the 256 slots, which text shorter than the slots never reaches."""
    like = torch.zeros(0)
    assert torch.equal(no_object_row(32, 256, like), torch.zeros(32))
    assert no_object_row(256, 256, like).nonzero().flatten().tolist() == [255]
    assert no_object_row(256, None, like).nonzero().flatten().tolist() == [255]
