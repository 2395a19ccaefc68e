"""The prediction layers of GLIP's VL-DyHead (``rpn.head``): token logits, box deltas, centerness.

The fusion tower (``rpn.head.dyhead_tower``) is built elsewhere and handed in, so that its
parameters sit under the official names while this module stays free of tower logic: the caller
runs the tower and passes its final visual levels and fused text to :meth:`VLDyHead.predict`.
``rpn.head.cls_logits`` (unused by GLIP: frozen in ``GeneralizedVLRCNN.__init__`` of microsoft/GLIP
maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py, and its loss weighted by 0) is not built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.glip.config import DyHeadConfig

# The official head clamps the token logits (CLAMP_DOT_PRODUCT; microsoft/GLIP
# maskrcnn_benchmark/modeling/rpn/vldyhead.py, VLDyHead.forward).
LOGIT_CLAMP = 50000.0


@dataclass
class HeadOutputs:
    """Per-level raw predictions, levels ordered P3 -> P7.

    ``dot_product_logits[l]`` ``[B, H_l*W_l, T]`` (locations row-major, y outer),
    ``bbox_reg[l]`` ``[B, 4, H_l, W_l]`` (already multiplied by the level's scale),
    ``centerness[l]`` ``[B, 1, H_l, W_l]`` (logits).
    """

    dot_product_logits: list[torch.Tensor]
    bbox_reg: list[torch.Tensor]
    centerness: list[torch.Tensor]

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        """``(H_l, W_l)`` of every level, what the anchor grid needs."""
        return [(int(reg.shape[-2]), int(reg.shape[-1])) for reg in self.bbox_reg]

    def select(self, index: int) -> "HeadOutputs":
        """The predictions of image ``index`` alone (batch of one), e.g. to decode it with its own prompt."""
        pick = slice(index, index + 1)
        return HeadOutputs(
            dot_product_logits=[x[pick] for x in self.dot_product_logits],
            bbox_reg=[x[pick] for x in self.bbox_reg],
            centerness=[x[pick] for x in self.centerness],
        )


class Scale(nn.Module):
    """A learnable scalar multiplier (official name ``scales.{l}.scale``)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class VLDyHead(nn.Module):
    """``rpn.head``: the fusion tower (given) plus GLIP's dot-product token head and box branches.

    ``config`` gives the channel count, the focal prior and the initial ``log_scale``; ``text_dim``
    is the text feature width (``LANG_DIM``, 768 for bert-base); one anchor per location.
    """

    def __init__(self, config: DyHeadConfig, text_dim: int, tower: nn.Module, num_levels: int = 5) -> None:
        super().__init__()
        channels = config.channels
        # Declared in the official order, so state_dict() lists keys as the checkpoints do.
        self.log_scale = nn.Parameter(torch.tensor([config.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - config.prior_prob) / config.prior_prob)]))
        self.dyhead_tower = tower
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        self.dot_product_projection_text = nn.Linear(text_dim, channels)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def predict(self, visual: list[torch.Tensor], text_hidden: torch.Tensor) -> HeadOutputs:
        """Predictions from the tower's outputs.

        ``visual``: the tower's final levels, each ``[B, C, H_l, W_l]``; ``text_hidden`` ``[B, T, D]``:
        the tower's fused text (``USE_FUSED_FEATURES_DOT_PRODUCT``; microsoft/GLIP
        maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``VLDyHead.forward``).
        """
        # The L2 normalisation stays in fp32 under autocast (a sum of squares of 768 values).
        text = F.normalize(text_hidden.float(), p=2, dim=-1)
        tokens = self.dot_product_projection_text(text / 2.0)  # [B, T, C]; the /2.0 is official
        token_bias = torch.matmul(text, self.bias_lang) + self.bias0  # [B, T]
        logits, boxes, centerness = [], [], []
        for level, feature in enumerate(visual):
            queries = feature.flatten(2).transpose(1, 2)  # [B, HW, C]; the image projection is Identity
            logit = torch.matmul(queries, tokens.transpose(-1, -2)) / self.log_scale.exp() + token_bias[:, None, :]
            logits.append(logit.clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP))
            boxes.append(self.scales[level](self.bbox_pred(feature)))
            centerness.append(self.centerness(feature))
        return HeadOutputs(dot_product_logits=logits, bbox_reg=boxes, centerness=centerness)
