"""CoOp's text context: where the vectors go, how the positive maps follow them, what stays frozen."""

from __future__ import annotations

import pytest
import torch

from bench.data.prompts import PromptClass, build_prompt
from bench.errors import BenchError
from bench.models.glip.anchors import grid_anchors
from bench.models.glip.atss_assignment import ImageTargets
from bench.models.glip.atss_loss import atss_losses
from bench.models.glip.postprocess import postprocess
from bench.tuning.base import build_method
from methods.coop import TextContext

M = 4


def coop_model(factory, tokens: int = M):
    model = factory()
    trainable = build_method("coop", {"context_tokens": tokens}).apply(model)
    return model, trainable


def test_shifted_prompt_moves_every_token_position_and_keeps_the_caption(task):
    moved = task.prompt.shifted(M)
    assert moved.caption == task.prompt.caption and moved.char_spans == task.prompt.char_spans
    assert moved.label_to_tokens == {label: [t + M for t in tokens] for label, tokens in task.prompt.label_to_tokens.items()}
    assert moved.num_tokens == task.prompt.num_tokens + M
    assert torch.equal(moved.token_map([1, 3], 64)[:, M:], task.prompt.token_map([1, 3], 64)[:, : 64 - M])
    assert task.prompt.shifted(0) is task.prompt


def test_context_goes_after_cls_and_the_caption_moves_right_within_the_slots():
    hook = TextContext(M, 8)
    embeddings = torch.randn(3, 12, 8)
    mask = torch.tensor([[1] * 5 + [0] * 7, [1] * 7 + [0] * 5, [1] * 3 + [0] * 9])
    out, out_mask = hook(embeddings, mask)
    assert out.shape == embeddings.shape and out_mask.shape == mask.shape
    assert torch.equal(out[:, 0], embeddings[:, 0])
    assert torch.equal(out[:, 1 : 1 + M], hook.context.detach().expand(3, -1, -1))
    assert torch.equal(out[:, 1 + M :], embeddings[:, 1 : 12 - M])
    assert torch.equal(out_mask.sum(1), mask.sum(1) + M)
    assert torch.equal(out_mask[:, 1 + M :], mask[:, 1 : 12 - M])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_text_features_carry_the_widened_mask(glip_a_factory, task, batch_size):
    model, _ = coop_model(glip_a_factory)
    text = model.encode_text([task.prompt] * batch_size)
    assert text.features.hidden.shape[:2] == (batch_size, model.text_length([task.prompt]))
    assert task.prompt.num_tokens + M <= model.text_length([task.prompt]) < model.text_slots
    assert text.features.mask.sum(1).tolist() == [task.prompt.num_tokens + M] * batch_size


def test_a_caption_that_no_longer_fits_is_refused(glip_a_factory, task):
    room = glip_a_factory().text_slots - task.prompt.num_tokens
    model, _ = coop_model(glip_a_factory, tokens=room)  # exactly fits: [SEP] lands in the last slot
    model.encode_text([task.prompt])
    model, _ = coop_model(glip_a_factory, tokens=room + 1)
    with pytest.raises(BenchError, match="inserts .* more"):
        model.encode_text([task.prompt])
    with pytest.raises(BenchError, match="context_tokens"):
        coop_model(glip_a_factory, tokens=model.text_slots)


def test_detections_score_the_shifted_token_columns(glip_a_factory, task):
    model, _ = coop_model(glip_a_factory)
    with torch.no_grad():
        (found,) = model(task.images, task.sizes, task.prompt)
        outputs, _ = model.predict(model.backbone(task.images), model.encode_text([task.prompt]).features)
        anchors = grid_anchors(outputs.feature_sizes, model.config.anchors)
        (shifted,) = postprocess(outputs, anchors, task.sizes, task.prompt.shifted(M).label_to_tokens, model.config.inference)
        (unshifted,) = postprocess(outputs, anchors, task.sizes, task.prompt.label_to_tokens, model.config.inference)
        (chunked,) = model.detect(task.images, task.sizes, [task.prompt])
    assert torch.equal(found.scores, shifted.scores) and torch.equal(found.labels, shifted.labels)
    assert not torch.equal(found.scores, unshifted.scores)
    assert torch.equal(chunked.scores, found.scores) and torch.equal(chunked.boxes, found.boxes)


def test_training_targets_use_the_shifted_positive_map(glip_a_factory, task):
    model, _ = coop_model(glip_a_factory)
    model.train()
    torch.manual_seed(0)
    losses = model(task.images, task.sizes, task.prompt, task.targets)
    text = model.encode_text([task.prompt])
    outputs, _ = model.predict(model.backbone(task.images), text.features)
    anchors = grid_anchors(outputs.feature_sizes, model.config.anchors)
    target = task.targets[0]
    positive_map = task.prompt.shifted(M).token_map(target["labels"], text.features.mask.shape[1])
    targets = [ImageTargets(target["boxes"].float(), target["labels"], positive_map, text_slots=model.text_slots)]
    expected, _ = atss_losses(outputs, anchors, targets, text.features.mask, model.config.loss)
    for name in expected:
        assert torch.allclose(losses[name], expected[name]), name


def test_only_the_context_trains_and_the_word_embeddings_stay_frozen(glip_a_factory, task):
    model, trainable = coop_model(glip_a_factory)
    words = model.text_encoder().word_embeddings().weight
    before, context = words.detach().clone(), model.text_encoder().input_embedding_hook.context
    assert list(trainable) == ["language_backbone.input_embedding_hook.context"] and not words.requires_grad
    start = context.detach().clone()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(task.images, task.sizes, task.prompt, task.targets).values()).backward()
        optimizer.step()
    assert torch.equal(words, before) and not torch.equal(context, start)
    assert build_method("coop", {"context_tokens": M}).expected_trainable(model) == M * words.shape[1]


def test_a_second_text_context_is_refused(glip_a_factory):
    model, _ = coop_model(glip_a_factory)
    with pytest.raises(BenchError, match="already taken"):
        build_method("coop").install(model)


# ----------------------------------------------------------------------------- maple (coupled prompts)
def test_maple_replaces_the_context_before_deep_layers_and_couples_the_vision_prompts(glip_a_factory, task):
    model = glip_a_factory()
    method = build_method("maple", {"context_tokens": 2})
    trainable = method.apply(model)
    encoder, blocks = model.text_encoder(), model.vision_blocks()
    depth = min(9, encoder.num_layers(), len(blocks))
    owner = encoder.input_embedding_hook
    seen = {}
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach())) for i, layer in enumerate(encoder.bert.encoder.layer)]
    model.encode_text([task.prompt])
    for handle in handles:
        handle.remove()
    for i in range(1, depth):  # seen after our own hook, which was registered first
        assert torch.equal(seen[i][0, 1:3], owner.deep[i - 1].detach())
    x = torch.zeros(3, 5, blocks[0].channels)
    expected = owner.couplings[0](owner.context).detach()
    assert torch.equal(blocks[0].module.extra_tokens(x).detach(), expected.expand(3, -1, -1))
    assert all(b.module.extra_tokens is None for b in blocks[depth:])
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    assert all(n.startswith("language_backbone.input_embedding_hook.") for n in trainable)
    model.train()
    sum(model(task.images, task.sizes, task.prompt, task.targets).values()).backward()
    assert owner.couplings[0].weight.grad.abs().sum() > 0 and owner.deep.grad.abs().sum() > 0
