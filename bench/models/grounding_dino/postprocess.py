"""Grounding DINO's detections for evaluation, as the official COCO evaluation selects them.

Each query's token probabilities (sigmoid of the logits) are averaged over each class's tokens
(the positive map normalised per class), and the ``detections_per_image`` best (query, class) pairs
of the image are kept; no NMS (Grounding DINO's ``PostProcessCocoGrounding``, ``num_select`` 300).
Boxes are predicted relative to the un-padded image, so they scale with its size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_convert, clip_boxes_to_image

from bench.data.prompts import Prompt
from bench.models.base import Detections


def select_detections(
    logits: torch.Tensor, boxes: torch.Tensor, image_sizes: torch.Tensor, prompts: Sequence[Prompt], detections_per_image: int
) -> list[Detections]:
    """``logits`` ``[B, Q, T]``, ``boxes`` ``[B, Q, 4]`` (normalised cx, cy, w, h), ``image_sizes``
    ``[B, 2]`` as ``(h, w)``, one (shifted) prompt per image -> detections in resized-image pixels."""
    probs = logits.float().sigmoid()
    found = []
    for i, prompt in enumerate(prompts):
        labels = [label for label in prompt.labels if label in prompt.label_to_tokens]
        maps = prompt.token_map(labels, probs.shape[-1]).to(probs.device)
        class_scores = probs[i] @ (maps / maps.sum(dim=1, keepdim=True).clamp(min=1)).t()  # [Q, C]
        scores, flat = class_scores.flatten().topk(min(detections_per_image, class_scores.numel()))
        query, column = flat // len(labels), flat % len(labels)
        height, width = (int(v) for v in image_sizes[i])
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        xyxy = clip_boxes_to_image(box_convert(boxes[i, query].float(), "cxcywh", "xyxy") * scale, (height, width))
        found.append(Detections(boxes=xyxy, scores=scores, labels=torch.tensor(labels, dtype=torch.long, device=probs.device)[column]))
    return found
