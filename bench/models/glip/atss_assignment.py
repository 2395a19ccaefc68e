"""ATSS anchor assignment for GLIP's grounding targets (official ``ATSSLossComputation.prepare_targets``).

Per image and ground-truth box: the ``topk`` anchors per level whose centres are closest to the box
centre are candidates; a candidate is positive when its IoU reaches the mean + (unbiased) std of the
candidates' IoUs and its centre lies inside the box. An anchor claimed by several boxes goes to the
one it overlaps most. Official code: microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py,
``ATSSLossComputation.prepare_targets``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.models.glip.box_coder import box_iou_legacy, encode

# Official "inside the box" margin: min(l, t, r, b) of the anchor centre must exceed it (pixels).
CENTRE_INSIDE_MARGIN = 0.01


@dataclass
class ImageTargets:
    """Ground truth of one image for the grounding loss.

    ``boxes`` ``[N, 4]`` xyxy in resized-image pixels; ``labels`` ``[N]`` int64 class labels (>= 1);
    ``positive_map`` ``[N, T]``: which prompt tokens name each box (any value > 0 counts as 1);
    ``text_slots``: the model's text slots, of which ``T`` (the batch's text length) may be only the
    first; ``None``: ``T`` is all of them. It places the "no object" token (:func:`no_object_row`).
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    positive_map: torch.Tensor
    text_slots: int | None = None


@dataclass
class AtssAssignment:
    """Per-anchor training targets of one image (anchors of all levels concatenated, P3 first).

    ``labels`` ``[A]`` int64, 0 = negative; ``matched_gt`` ``[A]`` index of the assigned box (0 for
    negatives, as the official argmax gives); ``reg_targets`` ``[A, 4]`` encoded deltas to the matched
    box (negatives are encoded against box 0 and never used); ``token_labels`` ``[A, T]`` float: a
    positive's box row of the positive map, a negative's "no object" row (see :func:`assign_atss`).
    """

    labels: torch.Tensor
    matched_gt: torch.Tensor
    reg_targets: torch.Tensor
    token_labels: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """``[A]`` bool mask of the positive anchors."""
        return self.labels > 0


def _candidates(
    anchor_centres: torch.Tensor, gt_centres: torch.Tensor, level_sizes: list[int], topk: int
) -> torch.Tensor:
    """``[K, N]`` indices (into all anchors) of the ``topk`` closest anchor centres per level and box."""
    # Same arithmetic as the official code, so topk resolves equal distances identically.
    distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()
    candidates, start = [], 0
    for size in level_sizes:
        _, nearest = distances[start:start + size].topk(min(topk, size), dim=0, largest=False)
        candidates.append(nearest + start)
        start += size
    return torch.cat(candidates, dim=0)


def no_object_row(num_tokens: int, text_slots: int | None, like: torch.Tensor) -> torch.Tensor:
    """A negative anchor's token targets ``[num_tokens]``: zeros except the last text slot, set to 1 as
    the official "no object" token (official code: microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py,
    ``unmatched_labels[-1] = 1`` in ``ATSSLossComputation.prepare_targets``, on a 256-slot map).

    The loss masks that slot unless a caption fills every slot. Text shorter than the slots
    (``text_slots > num_tokens``) does not reach it, so the row stays zero: the loss is the one of
    the text padded to every slot.
    """
    row = torch.zeros(num_tokens, dtype=like.dtype, device=like.device)
    slot = (text_slots or num_tokens) - 1
    if slot < num_tokens:
        row[slot] = 1.0
    return row


def assign_atss(anchors: list[torch.Tensor], target: ImageTargets, topk: int) -> AtssAssignment:
    """ATSS targets for one image.

    ``anchors``: per level ``[A_l, 4]`` xyxy (:func:`bench.models.glip.anchors.grid_anchors`).
    A negative anchor's token row is :func:`no_object_row` (as in the official
    ``ATSSLossComputation.prepare_targets``).
    """
    all_anchors = torch.cat(anchors, dim=0)
    num_anchors, num_tokens = all_anchors.shape[0], target.positive_map.shape[1]
    boxes = target.boxes.to(all_anchors)
    no_object = no_object_row(num_tokens, target.text_slots, all_anchors)
    if boxes.shape[0] == 0:
        # The official code cannot take an image without boxes; here every anchor is negative.
        zeros = torch.zeros(num_anchors, dtype=torch.long, device=all_anchors.device)
        no_objects = no_object.expand(num_anchors, -1).clone()
        return AtssAssignment(zeros, zeros.clone(), torch.zeros_like(all_anchors), no_objects)

    num_gt = boxes.shape[0]
    ious = box_iou_legacy(all_anchors, boxes)  # [A, N]
    anchor_centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2.0
    gt_centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    candidates = _candidates(anchor_centres, gt_centres, [len(a) for a in anchors], topk)  # [K, N]

    gt_index = torch.arange(num_gt, device=boxes.device)
    candidate_ious = ious[candidates, gt_index]  # [K, N]
    iou_threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # unbiased std, as official
    centres = anchor_centres[candidates]  # [K, N, 2]
    left_top = centres - boxes[:, :2]
    right_bottom = boxes[:, 2:] - centres
    inside = torch.cat((left_top, right_bottom), dim=-1).amin(dim=-1) > CENTRE_INSIDE_MARGIN
    is_positive = (candidate_ious >= iou_threshold) & inside

    # An anchor positive for several boxes takes the one with the highest IoU (first on ties).
    positive_pairs = torch.zeros_like(ious, dtype=torch.bool)
    positive_pairs[candidates, gt_index.expand_as(candidates)] = is_positive
    best_iou, matched = torch.where(positive_pairs, ious, torch.full_like(ious, -torch.inf)).max(dim=1)
    negative = best_iou == -torch.inf

    labels = target.labels.to(all_anchors.device)[matched].masked_fill(negative, 0)
    # Binary rows even if given a normalised map: official collate_batch turns it into bool -> float.
    token_labels = (target.positive_map > 0).to(all_anchors)[matched]
    token_labels[negative] = no_object
    reg_targets = encode(boxes[matched], all_anchors)
    return AtssAssignment(labels=labels, matched_gt=matched, reg_targets=reg_targets, token_labels=token_labels)
