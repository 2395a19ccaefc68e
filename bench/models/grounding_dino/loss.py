"""Grounding DINO's training loss from ``transformers``, with targets given as positive maps.

``transformers`` derives each class's tokens from the token ids (phrases between delimiters), which
cannot express caption prompts around a class name, class names that contain a delimiter, or tokens
inserted by a method. Our prompts already know each class's tokens (``Prompt.token_map``), so each
target carries its ``positive_map`` and this function builds the label maps from them, then calls
``transformers``' own loss (Hungarian matching with scipy, sigmoid focal loss over the text tokens,
L1 and GIoU box losses, the two-stage encoder loss and, when the config asks, one auxiliary loss per
decoder layer).

Every image receives the same label-map table (all boxes of the batch, one row each) and its boxes
index their own rows: ``transformers`` offsets the indices of image ``i > 0`` by the length of image
``i``'s table when it gathers the one-hot targets, which lands on an identical copy of the row here.
"""

from __future__ import annotations

import torch
from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss


def positive_map_loss(logits, labels, device, pred_boxes, config, label_maps, text_mask, **outputs):
    """Drop-in for ``GroundingDinoForObjectDetection.loss_function``; ``labels[i]`` holds ``boxes``
    ``[N_i, 4]`` (normalised cx, cy, w, h) and ``positive_map`` ``[N_i, max_text_len]``."""
    table = torch.cat([target["positive_map"] for target in labels]).to(device)
    if table.shape[0] == 0:  # no box in the whole batch: the matcher cannot run; nothing to learn from
        zero = logits.masked_fill(~text_mask, 0).sum() * 0.0
        return zero, {}, None
    targets, start = [], 0
    for target in labels:
        count = target["positive_map"].shape[0]
        targets.append({"class_labels": torch.arange(start, start + count, device=device), "boxes": target["boxes"].to(device)})
        start += count
    return GroundingDinoForObjectDetectionLoss(
        logits, targets, device, pred_boxes, config, (table,) * len(labels), text_mask, **outputs
    )
