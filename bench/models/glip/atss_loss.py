"""GLIP's three training losses on ATSS targets (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py,
``ATSSLossComputation.__call__``; maskrcnn_benchmark/layers/sigmoid_focal_loss.py).

* ``loss_dot_product_token``: sigmoid focal loss on every (anchor, prompt token) pair whose token is
  real (text mask 1), summed, over the number of positive anchors;
* ``loss_reg``: GIoU loss of the positives, weighted by their centerness targets, over the sum of
  those targets, times ``reg_loss_weight``;
* ``loss_centerness``: BCE-with-logits of the centerness branch on the positives, over their number.

The official ``loss_cls`` (0 x a focal loss of the unused ``cls_logits``) is left out: it is zero.
Single process: the official averages over GPUs are the identity here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from bench.models.glip.atss_assignment import AtssAssignment, ImageTargets, assign_atss
from bench.models.glip.box_coder import decode
from bench.models.glip.config import LossConfig
from bench.models.glip.head import HeadOutputs

# The official GIoU loss adds 1e-7 to the union and enclosing areas.
GIOU_EPS = 1e-7


def flatten_levels(outputs: HeadOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All levels concatenated per image: logits ``[B, A, T]``, box deltas ``[B, A, 4]``, centerness ``[B, A]``."""
    logits = torch.cat(outputs.dot_product_logits, dim=1)
    deltas = torch.cat([reg.permute(0, 2, 3, 1).flatten(1, 2) for reg in outputs.bbox_reg], dim=1)
    centerness = torch.cat([ctr.flatten(1) for ctr in outputs.centerness], dim=1)
    return logits, deltas, centerness


def centerness_targets(reg_targets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``[P]`` of each anchor centre inside its decoded target box (both ``[P, 4]``)."""
    boxes = decode(reg_targets, anchors)
    centre_x = (anchors[:, 2] + anchors[:, 0]) / 2
    centre_y = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack((centre_x - boxes[:, 0], boxes[:, 2] - centre_x), dim=1)
    top_bottom = torch.stack((centre_y - boxes[:, 1], boxes[:, 3] - centre_y), dim=1)
    return torch.sqrt(
        (left_right.amin(dim=1) / left_right.amax(dim=1)) * (top_bottom.amin(dim=1) / top_bottom.amax(dim=1))
    )


def giou_loss(pred_deltas: torch.Tensor, reg_targets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` ``[P]`` between decoded predictions and decoded targets (all ``[P, 4]``)."""
    pred = decode(pred_deltas, anchors)
    # Official: a predicted box narrower than one pixel has x2 < x1; it is made empty instead.
    pred = torch.cat((pred[:, :2], torch.maximum(pred[:, :2], pred[:, 2:])), dim=1)
    return generalized_box_iou_loss(pred, decode(reg_targets, anchors), reduction="none", eps=GIOU_EPS)


def check_text_length(targets: list[ImageTargets], text_mask: torch.Tensor) -> None:
    """Positive maps must be as long as the batch's text (``Prompt.token_map(labels, T)``)."""
    lengths = sorted({target.positive_map.shape[1] for target in targets} - {text_mask.shape[1]})
    if lengths:
        raise ValueError(
            f"Positive maps of {lengths} token positions for text of {text_mask.shape[1]}: build them with the "
            "length of the batch's text features (TextFeatures.mask.shape[1]), not the model's text slots."
        )


def atss_losses(
    outputs: HeadOutputs,
    anchors: list[torch.Tensor],
    targets: list[ImageTargets],
    text_mask: torch.Tensor,
    config: LossConfig,
) -> tuple[dict[str, torch.Tensor], list[AtssAssignment]]:
    """GLIP's losses for a batch, and the per-image ATSS assignments they were computed from.

    ``anchors``: per level ``[A_l, 4]``, shared by the padded batch; ``targets``: one per image, with
    positive maps ``[N, T]``; ``text_mask`` ``[B, T]``: the tokenizer's attention mask, as long as the
    batch's text. Only real tokens enter the token loss, so a batch's text padded to any length
    gives the same losses. Computed in fp32, as the official loss (``custom_fwd(cast_inputs=float32)``) is.
    """
    check_text_length(targets, text_mask)
    with torch.autocast(device_type=text_mask.device.type, enabled=False):
        assignments = [assign_atss(anchors, target, config.atss_topk) for target in targets]
        logits, deltas, centerness = (t.float() for t in flatten_levels(outputs))
        all_anchors = torch.cat(anchors, dim=0)

        positive = torch.stack([a.positive for a in assignments])  # [B, A]
        num_positive = max(float(positive.sum().item()), 1.0)
        token_labels = torch.stack([a.token_labels for a in assignments])  # [B, A, T]
        real_token = (text_mask > 0)[:, None, :].expand_as(logits)
        token_loss = sigmoid_focal_loss(
            logits[real_token], token_labels[real_token],
            alpha=config.token_alpha, gamma=config.token_gamma, reduction="sum",
        ) / num_positive

        reg_targets = torch.stack([a.reg_targets for a in assignments])[positive]  # [P, 4]
        pos_anchors = all_anchors.expand(positive.shape[0], -1, -1)[positive]
        pos_deltas, pos_centerness = deltas[positive], centerness[positive]
        if reg_targets.shape[0] == 0:
            # No positive anchor in the batch: zero losses that still reach the branches' parameters.
            reg_loss, centerness_loss = pos_deltas.sum(), pos_centerness.sum()
        else:
            ctr_targets = centerness_targets(reg_targets, pos_anchors)
            weighted = (giou_loss(pos_deltas, reg_targets, pos_anchors) * ctr_targets).sum()
            reg_loss = weighted / ctr_targets.sum().item()
            centerness_loss = F.binary_cross_entropy_with_logits(pos_centerness, ctr_targets, reduction="sum")
            centerness_loss = centerness_loss / num_positive
    losses = {
        "loss_dot_product_token": token_loss * config.token_loss_weight,
        "loss_reg": reg_loss * config.reg_loss_weight,
        "loss_centerness": centerness_loss,
    }
    return losses, assignments
