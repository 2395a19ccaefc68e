"""GLIP's prediction head, anchors, box coder, ATSS losses and post-processing against fixture A.

Fixture A holds the official code's tensors (tests/fixtures/README.md): the tower's final outputs
feed our head, and the reference head outputs feed anchors, assignment, losses and NMS, so each
stage is checked on its own.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.models.glip.anchors import grid_anchors
from bench.models.glip.atss_assignment import ImageTargets, assign_atss
from bench.models.glip.atss_loss import atss_losses
from bench.models.glip.box_coder import box_iou_legacy, decode, encode
from bench.models.glip.config import GLIP_L, GLIP_T, from_reduced_config
from bench.models.glip.head import HeadOutputs, VLDyHead
from bench.models.glip.postprocess import (
    TokenToClass,
    candidates_before_nms,
    cap_detections,
    class_wise_nms_legacy,
    postprocess,
)

LEVELS = range(5)
HEAD_PREFIX = "rpn.head."
NOT_BUILT = ("dyhead_tower.", "cls_logits.")  # the tower comes from elsewhere; cls_logits is unused


@pytest.fixture(scope="module")
def config(fixture_a_dir):
    return from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")


@pytest.fixture(scope="module")
def head_checkpoint(fixture_a_dir) -> dict[str, torch.Tensor]:
    """Fixture A's ``rpn.head.*`` tensors, names relative to the head."""
    model = torch.load(fixture_a_dir / "glip_reduced_A.pth", weights_only=True)["model"]
    prefix = "module." + HEAD_PREFIX
    return {key[len(prefix):]: value for key, value in model.items() if key.startswith(prefix)}


@pytest.fixture(scope="module")
def head(config, head_checkpoint) -> VLDyHead:
    model = VLDyHead(config.dyhead, config.text.hidden_size, tower=nn.ModuleList(), num_levels=len(config.anchors.strides))
    model.load_state_dict({k: v for k, v in head_checkpoint.items() if not k.startswith(NOT_BUILT)})
    return model


@pytest.fixture(scope="module")
def tower_outputs(fixture_a_reference):
    """The official tower's final visual levels and fused text."""
    visual = [fixture_a_reference[f"eval.tower.5.DyConv.visual.{level}"] for level in LEVELS]
    return visual, fixture_a_reference["eval.tower.5.DyConv.lang_hidden"]


@pytest.fixture(scope="module")
def reference_outputs(fixture_a_reference) -> HeadOutputs:
    """The official head outputs (training-mode outputs are identical: every dropout is 0)."""
    return HeadOutputs(
        *([fixture_a_reference[f"eval.head.{name}.{level}"] for level in LEVELS]
          for name in ("dot_product_logits", "bbox_reg", "centerness"))
    )


@pytest.fixture(scope="module")
def anchors(config, reference_outputs):
    return grid_anchors(reference_outputs.feature_sizes, config.anchors)


@pytest.fixture(scope="module")
def targets(fixture_a_reference) -> ImageTargets:
    ref = fixture_a_reference
    return ImageTargets(ref["train.target0.boxes_resized_xyxy"], ref["train.target0.labels"], ref["train.positive_map"])


@pytest.fixture(scope="module")
def label_to_tokens(fixture_a_summary) -> dict[int, list[int]]:
    return {int(label): tokens for label, tokens in fixture_a_summary["positive_map_label_to_token"].items()}


def _twice(outputs: HeadOutputs) -> HeadOutputs:
    """The same image twice in a batch."""
    return HeadOutputs(*([torch.cat([t, t]) for t in levels] for levels in
                         (outputs.dot_product_logits, outputs.bbox_reg, outputs.centerness)))


def _manifest_head_rows(path) -> list[tuple[str, list[int]]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")[:2]
        name = key.removeprefix("module.")
        if name.startswith(HEAD_PREFIX) and not name[len(HEAD_PREFIX):].startswith(NOT_BUILT):
            rows.append((name[len(HEAD_PREFIX):], [int(n) for n in shape.strip("[]").split(",")]))
    return rows


# --- the head -------------------------------------------------------------------------------------


def test_checkpoint_loads_by_exact_name(config, head_checkpoint):
    model = VLDyHead(config.dyhead, config.text.hidden_size, tower=nn.ModuleList())
    result = model.load_state_dict(head_checkpoint, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(k for k in head_checkpoint if k.startswith(NOT_BUILT))
    assert any(k.startswith("cls_logits.") for k in result.unexpected_keys)


@pytest.mark.parametrize("preset,manifest", [(GLIP_T, "glip_manifest_T.tsv"), (GLIP_L, "glip_manifest_L.tsv")])
def test_full_size_names_and_shapes_match_manifest(fixtures_dir, preset, manifest):
    with torch.device("meta"):
        model = VLDyHead(preset.dyhead, preset.text.hidden_size, tower=nn.ModuleList())
    ours = [(name, list(tensor.shape)) for name, tensor in model.state_dict().items()]
    assert ours == _manifest_head_rows(fixtures_dir / manifest)


def test_official_initial_values():
    model = VLDyHead(GLIP_T.dyhead, 768, tower=nn.ModuleList())
    assert model.bias0.item() == pytest.approx(-math.log(99.0))
    assert model.log_scale.item() == GLIP_T.dyhead.log_scale_init == 0.0
    assert torch.count_nonzero(model.bias_lang) == 0
    assert all(scale.scale.item() == 1.0 for scale in model.scales)
    for conv in (model.bbox_pred, model.centerness):
        assert torch.count_nonzero(conv.bias) == 0
    assert model.bbox_pred.weight.std().item() == pytest.approx(0.01, rel=0.3)


def test_predictions_match_reference(head, tower_outputs, reference_outputs):
    with torch.no_grad():
        ours = head.predict(*tower_outputs)
    for name in ("dot_product_logits", "bbox_reg", "centerness"):
        for level in LEVELS:
            torch.testing.assert_close(getattr(ours, name)[level], getattr(reference_outputs, name)[level], atol=1e-4, rtol=1e-4)


def test_batch_of_two_repeats_the_reference(head, tower_outputs, reference_outputs):
    visual, text = tower_outputs
    with torch.no_grad():
        ours = head.predict([torch.cat([v, v]) for v in visual], torch.cat([text, text]))
    for name in ("dot_product_logits", "bbox_reg", "centerness"):
        for level in LEVELS:
            for image in range(2):
                torch.testing.assert_close(getattr(ours, name)[level][image:image + 1], getattr(reference_outputs, name)[level],
                                           atol=1e-4, rtol=1e-4)


def test_head_gradients_match_reference(config, head, tower_outputs, anchors, targets, fixture_a_reference):
    """The head's parameters see only the tower outputs and the losses, so their gradients are comparable."""
    head.zero_grad()
    losses, _ = atss_losses(head.predict(*tower_outputs), anchors, [targets], fixture_a_reference["eval.lang.masks"], config.loss)
    sum(losses.values()).backward()
    compared = 0
    for name, parameter in head.named_parameters():
        key = f"train.grad.{HEAD_PREFIX}{name}"
        if key in fixture_a_reference:
            torch.testing.assert_close(parameter.grad, fixture_a_reference[key], rtol=1e-4, atol=1e-6)
            compared += 1
    head.zero_grad()
    assert compared == 7


def test_bf16_autocast_runs_finite(config, head, tower_outputs, anchors, targets, label_to_tokens, fixture_a_reference):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = head.predict(*tower_outputs)
        losses, _ = atss_losses(outputs, anchors, [targets], fixture_a_reference["eval.lang.masks"], config.loss)
        detections = postprocess(outputs, anchors, fixture_a_reference["input.image_sizes_hw"], label_to_tokens, config.inference)[0]
    for tensor in (*outputs.dot_product_logits, *outputs.bbox_reg, *outputs.centerness, *losses.values()):
        assert torch.isfinite(tensor).all()
    assert all(loss.dtype == torch.float32 for loss in losses.values())
    assert len(detections.scores) > 0 and torch.isfinite(detections.boxes).all()


# --- anchors and box coding -----------------------------------------------------------------------


def test_anchors_match_reference(anchors, fixture_a_reference, fixture_a_dir):
    for level in LEVELS:
        assert torch.equal(anchors[level], fixture_a_reference[f"eval.anchors.img0.{level}"])
    cells = torch.load(fixture_a_dir / "glip_reduced_A.pth", weights_only=True)["model"]
    for level in LEVELS:
        assert torch.equal(anchors[level][:1], cells[f"module.rpn.anchor_generator.cell_anchors.{level}"])


def test_box_coder_round_trip_and_legacy_convention():
    anchors = torch.tensor([[-28.0, -28.0, 35.0, 35.0], [0.0, 0.0, 9.0, 19.0]])
    boxes = torch.tensor([[10.0, 12.0, 50.0, 40.0], [2.0, 3.0, 5.0, 30.0]])
    torch.testing.assert_close(decode(encode(boxes, anchors), anchors), boxes, atol=1e-4, rtol=0)
    assert torch.equal(encode(anchors, anchors), torch.zeros(2, 4))
    # "+1" widths: a box decoded with zero deltas is its anchor; huge dw is clamped at log(1000/16).
    huge = decode(torch.tensor([[0.0, 0.0, 1e4, 0.0]]), anchors[:1])
    assert huge[0, 2] - huge[0, 0] + 1 == pytest.approx(64 * 1000 / 16, rel=1e-5)
    # A 10x10-pixel box (x2 = x1 + 9) overlapping half of another: IoU = 50 / 150.
    iou = box_iou_legacy(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([[5.0, 0.0, 14.0, 9.0]]))
    assert iou.item() == pytest.approx(50 / 150)


# --- ATSS assignment and losses -------------------------------------------------------------------


def test_atss_assignment_matches_reference(config, anchors, targets, fixture_a_reference):
    ref = fixture_a_reference
    assignment = assign_atss(anchors, targets, config.loss.atss_topk)
    assert torch.equal(assignment.labels, ref["train.atss.img0.labels_per_anchor"])
    torch.testing.assert_close(assignment.reg_targets, ref["train.atss.img0.reg_targets"], atol=1e-5, rtol=1e-5)
    assert torch.equal(assignment.token_labels[assignment.positive], ref["train.atss.img0.token_labels_pos_rows"])
    negatives = assignment.token_labels[~assignment.positive]
    assert torch.all(negatives[:, -1] == 1) and torch.count_nonzero(negatives[:, :-1]) == 0  # official "no object" slot


def test_losses_match_reference(config, reference_outputs, anchors, targets, fixture_a_reference):
    losses, _ = atss_losses(reference_outputs, anchors, [targets], fixture_a_reference["eval.lang.masks"], config.loss)
    assert set(losses) == {"loss_dot_product_token", "loss_reg", "loss_centerness"}
    for name, value in losses.items():
        torch.testing.assert_close(value, fixture_a_reference[f"train.loss.{name}"], rtol=1e-5, atol=0)


def test_batch_of_two_gives_the_same_losses(config, reference_outputs, anchors, targets, fixture_a_reference):
    mask = fixture_a_reference["eval.lang.masks"]
    losses, assignments = atss_losses(_twice(reference_outputs), anchors, [targets, targets], torch.cat([mask, mask]), config.loss)
    for name, value in losses.items():
        torch.testing.assert_close(value, fixture_a_reference[f"train.loss.{name}"], rtol=1e-5, atol=0)
    assert torch.equal(assignments[1].labels, fixture_a_reference["train.atss.img0.labels_per_anchor"])


def test_image_without_boxes_is_all_negative(config, reference_outputs, anchors, fixture_a_reference):
    empty = ImageTargets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 256))
    losses, (assignment,) = atss_losses(reference_outputs, anchors, [empty], fixture_a_reference["eval.lang.masks"], config.loss)
    assert not assignment.positive.any()
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    assert losses["loss_dot_product_token"].item() > 0.0


# --- post-processing ------------------------------------------------------------------------------


def _assert_detections_match(detections, reference, prefix="eval.det0"):
    scores, order = reference[f"{prefix}.scores"].sort(descending=True, stable=True)
    assert len(detections.scores) == len(scores)
    torch.testing.assert_close(detections.scores, scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(detections.boxes, reference[f"{prefix}.boxes_resized_xyxy"][order], atol=1e-3, rtol=0)
    assert torch.equal(detections.labels, reference[f"{prefix}.labels"][order])


def test_detections_match_reference(config, reference_outputs, anchors, label_to_tokens, fixture_a_reference):
    sizes = fixture_a_reference["input.image_sizes_hw"]
    (detections,) = postprocess(reference_outputs, anchors, sizes, label_to_tokens, config.inference)
    _assert_detections_match(detections, fixture_a_reference)


def test_nms_statistics_match_reference(config, reference_outputs, anchors, label_to_tokens, fixture_a_reference, fixture_a_summary):
    info = fixture_a_summary["nms_info"][0]
    sizes = fixture_a_reference["input.image_sizes_hw"]
    (found,) = candidates_before_nms(reference_outputs, anchors, sizes, label_to_tokens, config.inference)
    assert len(found.scores) == info["n_candidates_after_per_level_topk"]
    keep = class_wise_nms_legacy(found.boxes, found.scores, found.labels, config.inference.nms_thresh)
    assert len(keep) == info["n_after_nms"]
    cap = config.inference.detections_per_image
    assert found.scores[keep][cap - 1].item() == pytest.approx(info["score_at_cap"], abs=1e-5)
    assert found.scores[keep][cap].item() == pytest.approx(info["score_after_cap"], abs=1e-5)


def test_batch_of_two_images_of_different_sizes(config, reference_outputs, anchors, label_to_tokens, fixture_a_reference):
    """Each image is clipped to its own un-padded size, whatever the padded batch size."""
    sizes = fixture_a_reference["input.image_sizes_hw"]
    smaller = sizes - torch.tensor([[40, 60]])
    first, second = postprocess(_twice(reference_outputs), anchors, torch.cat([sizes, smaller]), label_to_tokens, config.inference)
    _assert_detections_match(first, fixture_a_reference)
    (alone,) = postprocess(reference_outputs, anchors, smaller, label_to_tokens, config.inference)
    for ours, expected in zip((second.boxes, second.scores, second.labels), (alone.boxes, alone.scores, alone.labels)):
        assert torch.equal(ours, expected)
    height, width = smaller[0].tolist()
    assert second.boxes[:, 0::2].max() <= width - 1 and second.boxes[:, 1::2].max() <= height - 1


def _legacy_nms_reference(boxes, scores, labels, threshold):
    """Greedy NMS written out as ml_nms.cu does it, for comparison."""
    order = scores.argsort(descending=True, stable=True)
    iou = box_iou_legacy(boxes, boxes) * (labels[:, None] == labels[None, :])
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > threshold
    return torch.tensor(keep, dtype=torch.long)


def test_class_wise_nms_is_the_legacy_one():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=generator) * 60
    sides = torch.rand(300, 2, generator=generator) * 30
    boxes = torch.cat([corners, corners + sides], dim=1).round()  # integer boxes: where "+1" matters most
    scores = torch.rand(300, generator=generator)
    labels = torch.randint(1, 4, (300,), generator=generator)
    for threshold in (0.3, 0.5, 0.6):
        assert torch.equal(class_wise_nms_legacy(boxes, scores, labels, threshold), _legacy_nms_reference(boxes, scores, labels, threshold))
    # An IoU of exactly float32(threshold) is kept, as the official float32 kernel decides
    # (a 10x10 box and a 10x6 box inside it: IoU 60 / 100 = 0.6, GLIP's threshold).
    pair = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 5.0]])
    assert box_iou_legacy(pair[:1], pair[1:]).item() == torch.tensor(0.6).item()
    assert len(class_wise_nms_legacy(pair, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.6)) == 2
    assert len(class_wise_nms_legacy(pair, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.59)) == 1
    # Boxes of another class never suppress each other.
    assert len(class_wise_nms_legacy(pair, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), 0.1)) == 2


def test_cap_keeps_ties_at_the_cap():
    scores = torch.tensor([0.9, 0.5, 0.7, 0.5, 0.1])
    assert cap_detections(scores, 3).tolist() == [0, 2, 1, 3]
    assert cap_detections(scores, 10).tolist() == [0, 2, 1, 3, 4]


def test_token_to_class_takes_token_means_with_label_gaps():
    mapping = TokenToClass.from_label_map({4: [1, 2], 2: [5]}, num_tokens=8)
    probs = torch.arange(8.0)[None, None, :] / 10
    scores = (probs @ mapping.membership) / mapping.counts
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.0, 0.5, 0.0, 0.15]))
