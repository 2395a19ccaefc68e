"""GLIP's inference post-processing (official ``ATSSPostProcessor``, microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/inference.py).

Token probabilities become class scores (mean over each class's prompt tokens); per level and
image the confident (anchor, class) pairs are ranked by score x centerness and decoded; then
class-wise NMS with "+1" IoU and a cap on detections per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import nms

from bench.models.base import Detections
from bench.models.glip.box_coder import decode
from bench.models.glip.config import InferenceConfig
from bench.models.glip.head import HeadOutputs


@dataclass
class TokenToClass:
    """A prompt's positive map as a matrix: ``class_scores = probs @ membership / counts``.

    ``membership`` ``[T, C]`` counts how often token t names class column c (column c = label c+1);
    ``counts`` ``[C]`` is each class's token count (1 for classes absent from the prompt, whose
    column stays zero). Summing ones then dividing equals the official ``mean`` over the token list.
    """

    membership: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_label_map(
        cls, label_to_tokens: Mapping[int, Sequence[int]], num_tokens: int, device: torch.device | str | None = None
    ) -> TokenToClass:
        """From ``{label (1-based, any order, gaps allowed): [token indices]}``; C = the largest label."""
        num_classes = max((int(label) for label in label_to_tokens), default=0)
        membership = torch.zeros(num_tokens, num_classes, device=device)
        for label, tokens in label_to_tokens.items():
            for token in tokens:
                membership[int(token), int(label) - 1] += 1.0
        return cls(membership, membership.sum(0).clamp(min=1.0))


def _level_candidates(
    logits: torch.Tensor,
    deltas: torch.Tensor,
    centerness: torch.Tensor,
    anchors: torch.Tensor,
    token_to_class: TokenToClass,
    image_sizes_hw: torch.Tensor,
    config: InferenceConfig,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image, ``(boxes [K, 4], scores [K], labels [K])`` of one level before NMS.

    ``logits`` ``[B, HW, T]``, ``deltas`` ``[B, 4, H, W]``, ``centerness`` ``[B, 1, H, W]``,
    ``anchors`` ``[HW, 4]``, ``image_sizes_hw`` ``[B, 2]`` un-padded resized sizes.
    """
    probs = logits.float().sigmoid()
    class_scores = (probs @ token_to_class.membership) / token_to_class.counts  # [B, HW, C]
    # The threshold applies to the token score, before centerness (official
    # ATSSPostProcessor.forward_for_single_feature_map).
    candidates = class_scores > config.pre_nms_thresh
    combined = class_scores * centerness.float().flatten(1).sigmoid()[:, :, None]
    deltas = deltas.float().permute(0, 2, 3, 1).flatten(1, 2)  # [B, HW, 4]
    results = []
    for image, (height, width) in enumerate(image_sizes_hw.tolist()):
        scores = combined[image][candidates[image]]  # row-major over (anchor, class)
        scores, order = scores.topk(min(scores.numel(), config.pre_nms_top_n))
        location, column = candidates[image].nonzero().unbind(1)
        location, column = location[order], column[order]
        boxes = decode(deltas[image, location], anchors[location])
        # Clip to the un-padded image with "+1" pixel bounds (official clip_to_image).
        upper = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        results.append((boxes, torch.sqrt(scores), column + 1))
    return results


def class_wise_nms_legacy(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept by per-class NMS with "+1" IoU, suppressing IoU > ``threshold`` (official ``ml_nms``).

    torchvision's IoU has no "+1"; adding 1 to x2 and y2 makes its widths, heights and
    intersections exactly the legacy ones (up to float rounding of the +1). Classes run one by one
    rather than through ``batched_nms``'s coordinate-offset trick, whose large offsets would cost
    float32 precision. Returned indices are sorted by descending score.
    """
    # The official kernel compares float32 IoUs with a float32 threshold; torchvision compares in
    # double, which would suppress a pair whose IoU is exactly float32(threshold) (e.g. 3/5 of
    # integer boxes at 0.6). Rounding the threshold to float32 first gives the official decision.
    threshold = float(torch.tensor(threshold, dtype=torch.float32))
    shifted = torch.cat((boxes[:, :2], boxes[:, 2:] + 1), dim=1)
    keep = [
        members[nms(shifted[members], scores[members], threshold)]
        for members in (torch.nonzero(labels == label).squeeze(1) for label in torch.unique(labels))
    ]
    keep = torch.cat(keep) if keep else labels.new_zeros(0)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def cap_detections(scores: torch.Tensor, max_detections: int) -> torch.Tensor:
    """Indices of the ``max_detections`` best ``scores`` ``[N]`` (descending).

    The official code keeps every score >= the cap-th best (``kthvalue``), so ties at the cap may
    keep a few more; reproduced for parity.
    """
    order = scores.argsort(descending=True, stable=True)
    if max_detections <= 0 or scores.numel() <= max_detections:
        return order
    return order[scores[order] >= scores[order[max_detections - 1]]]


def candidates_before_nms(
    outputs: HeadOutputs,
    anchors: list[torch.Tensor],
    image_sizes_hw: torch.Tensor,
    label_to_tokens: Mapping[int, Sequence[int]],
    config: InferenceConfig,
) -> list[Detections]:
    """Per image, the candidates of all levels concatenated (P3 first), before NMS."""
    logits = outputs.dot_product_logits
    token_to_class = TokenToClass.from_label_map(label_to_tokens, logits[0].shape[-1], device=logits[0].device)
    per_level = [
        _level_candidates(*level, token_to_class, image_sizes_hw, config)
        for level in zip(logits, outputs.bbox_reg, outputs.centerness, anchors, strict=True)
    ]
    return [
        Detections(*(torch.cat(parts) for parts in zip(*image_levels)))
        for image_levels in zip(*per_level)
    ]


def postprocess(
    outputs: HeadOutputs,
    anchors: list[torch.Tensor],
    image_sizes_hw: torch.Tensor,
    label_to_tokens: Mapping[int, Sequence[int]],
    config: InferenceConfig,
) -> list[Detections]:
    """Final detections per image, in resized-image pixels, sorted by descending score.

    ``anchors`` per level ``[HW_l, 4]`` (shared by the padded batch); ``image_sizes_hw`` ``[B, 2]``
    the un-padded resized sizes; ``label_to_tokens`` the prompt's ``positive_map_label_to_token``.
    Labels are the prompt's 1-based class labels. Runs in fp32, also under autocast.
    """
    device_type = outputs.bbox_reg[0].device.type
    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        results = []
        for found in candidates_before_nms(outputs, anchors, image_sizes_hw, label_to_tokens, config):
            keep = class_wise_nms_legacy(found.boxes, found.scores, found.labels, config.nms_thresh)
            keep = keep[cap_detections(found.scores[keep], config.detections_per_image)]
            results.append(Detections(found.boxes[keep], found.scores[keep], found.labels[keep]))
    return results
