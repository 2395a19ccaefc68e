"""Grounding DINO's training losses, computed by ``transformers``' criterion from positive maps.

Two terms, both with ``transformers``' matcher and losses (Hungarian matching with scipy, sigmoid
focal loss over the text tokens, L1 and GIoU box losses, its loss weights):

* :func:`decoder_loss`, installed as the model's ``loss_function``: the last decoder layer plus one
  auxiliary loss per earlier decoder layer, as in the official training recipe (released configs
  have ``auxiliary_loss`` off, which only matters to ``transformers``' own loss);
* :func:`proposal_loss`: the two-stage encoder loss on the ``num_queries`` proposals the encoder
  selects, scored from the encoder memory and with boxes that keep their gradient, as the official
  code supervises them. ``transformers``' own two-stage term instead scores the learned query
  embeddings against the text and uses the detached proposal boxes, so no gradient reaches the
  proposal layers (``enc_output``, ``enc_output_norm``, ``encoder_output_bbox_embed``); it is not used.

Targets come as positive maps. ``transformers`` derives each class's tokens from the token ids
(phrases between delimiters), which cannot express caption prompts around a class name, class names
that contain a delimiter, or tokens inserted by a method; our prompts know each class's tokens
(``Prompt.token_map``). Every image receives the same label-map table (all boxes of the batch, one
row each) and its boxes index their own rows: ``transformers`` offsets the indices of image ``i > 0``
by the length of image ``i``'s table when it gathers the one-hot targets, which lands on an identical
copy of the row here.
"""

from __future__ import annotations

import copy

import torch
from transformers import GroundingDinoConfig
from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss


def _table(labels: list[dict[str, torch.Tensor]], device) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The label-map table of the batch and ``transformers``-style targets indexing its rows."""
    table = torch.cat([target["positive_map"] for target in labels]).to(device)
    targets, start = [], 0
    for target in labels:
        count = target["positive_map"].shape[0]
        targets.append({"class_labels": torch.arange(start, start + count, device=device), "boxes": target["boxes"].to(device)})
        start += count
    return table, targets


def _single_stage(config: GroundingDinoConfig, auxiliary: bool) -> GroundingDinoConfig:
    """``config`` as the criterion should see it (a copy): no two-stage term, auxiliary losses as asked."""
    view = copy.copy(config)
    view.two_stage, view.auxiliary_loss = False, auxiliary
    return view


def decoder_loss(logits, labels, device, pred_boxes, config, label_maps, text_mask, **outputs):
    """Drop-in for ``GroundingDinoForObjectDetection.loss_function``; ``labels[i]`` holds ``boxes``
    ``[N_i, 4]`` (normalised cx, cy, w, h) and ``positive_map`` ``[N_i, max_text_len]``."""
    table, targets = _table(labels, device)
    if table.shape[0] == 0:  # no box in the whole batch: the matcher cannot run; nothing to learn from
        return logits.masked_fill(~text_mask, 0).sum() * 0.0, {}, None
    for replaced in ("encoder_logits", "encoder_pred_boxes"):  # the two-stage term is proposal_loss
        outputs.pop(replaced, None)
    return GroundingDinoForObjectDetectionLoss(
        logits, targets, device, pred_boxes, _single_stage(config, True), (table,) * len(labels), text_mask, **outputs
    )


def proposal_loss(
    encoder_class: torch.Tensor, encoder_coords: torch.Tensor, labels: list[dict[str, torch.Tensor]],
    config: GroundingDinoConfig, attention_mask: torch.Tensor,
) -> torch.Tensor:
    """The encoder's loss on its selected proposals.

    ``encoder_class`` ``[B, N, max_text_len]`` and ``encoder_coords`` ``[B, N, 4]`` (box logits) are
    the model's ``enc_outputs_class`` / ``enc_outputs_coord_logits`` over all ``N`` image positions;
    the proposals are the ``num_queries`` positions with the highest token logit, as the model picks
    them; ``attention_mask`` ``[B, T]`` marks the real text tokens.
    """
    table, targets = _table(labels, encoder_class.device)
    if table.shape[0] == 0:
        return encoder_class.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
    chosen = encoder_class.max(-1).values.topk(config.num_queries, dim=1).indices
    logits = torch.gather(encoder_class, 1, chosen.unsqueeze(-1).expand(-1, -1, encoder_class.shape[-1]))
    boxes = torch.gather(encoder_coords, 1, chosen.unsqueeze(-1).expand(-1, -1, 4)).sigmoid()
    text_mask = torch.zeros_like(logits, dtype=torch.bool)
    text_mask[:, :, : attention_mask.shape[1]] = attention_mask.bool()[:, None, :]
    loss, _, _ = GroundingDinoForObjectDetectionLoss(
        logits, targets, encoder_class.device, boxes, _single_stage(config, False), (table,) * len(labels), text_mask
    )
    return loss
