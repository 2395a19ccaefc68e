"""GLIP's box geometry in the legacy maskrcnn_benchmark "+1" convention (microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``BoxCoder``).

A box ``(x1, y1, x2, y2)`` covers the pixels x1..x2 inclusive, so its width is ``x2 - x1 + 1``.
The official code uses this convention in the box coder, the ATSS IoU and NMS; keeping it is what
makes decoded boxes, assignments and suppressions match the released models.
"""

from __future__ import annotations

import math

import torch

# Delta weights (dx, dy, dw, dh) of GLIP's ATSS box coder.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Upper bound on dw, dh before exp(), so a wild prediction cannot overflow.
DELTA_CLAMP = math.log(1000.0 / 16)


def _centres_and_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x = (boxes[:, 2] + boxes[:, 0]) / 2
    ctr_y = (boxes[:, 3] + boxes[:, 1]) / 2
    return ctr_x, ctr_y, widths, heights


def encode(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets ``[N, 4]`` (dx, dy, dw, dh) that move ``anchors`` ``[N, 4]`` onto ``gt_boxes`` ``[N, 4]``."""
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    ex_x, ex_y, ex_w, ex_h = _centres_and_sizes(anchors)
    gt_x, gt_y, gt_w, gt_h = _centres_and_sizes(gt_boxes)
    return torch.stack(
        (
            wx * (gt_x - ex_x) / ex_w,
            wy * (gt_y - ex_y) / ex_h,
            ww * torch.log(gt_w / ex_w),
            wh * torch.log(gt_h / ex_h),
        ),
        dim=1,
    )


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``[N, 4]`` xyxy from predicted ``deltas`` ``[N, 4]`` relative to ``anchors`` ``[N, 4]``."""
    anchors = anchors.to(deltas.dtype)
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    ctr_x, ctr_y, widths, heights = _centres_and_sizes(anchors)
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=DELTA_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=DELTA_CLAMP)
    pred_x = dx * widths + ctr_x
    pred_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths - 1)
    half_h = 0.5 * (torch.exp(dh) * heights - 1)
    return torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=1)


def box_iou_legacy(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` with "+1" areas (official ``boxlist_iou``; torchvision's has no +1)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    top_left = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)
