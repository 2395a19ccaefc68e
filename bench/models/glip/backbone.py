"""GLIP's image backbone: Swin (``backbone.body``) followed by the FPN (``backbone.fpn``).

The official module is ``nn.Sequential(body, fpn)`` built for ``SWINT-FPN-RETINANET``
(microsoft/GLIP maskrcnn_benchmark/modeling/backbone/__init__.py, ``build_retinanet_swint_fpn_backbone``);
the attribute names here give the same state-dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.models.base import VisionBlock
from bench.models.glip.config import FpnConfig, GlipConfig, SwinConfig
from bench.models.glip.fpn import FPN
from bench.models.glip.swin import SwinTransformer


@dataclass(frozen=True)
class BackboneFeatures:
    """Both outputs of one backbone pass.

    ``stages``: the 4 Swin maps ``[B, C_i, H/4/2^i, W/4/2^i]`` (official ``stage2..stage5``; stage2
    is computed but unused by the FPN). ``pyramid``: P3..P7 ``[B, out_channels, H_l, W_l]``.
    """

    stages: list[torch.Tensor]
    pyramid: list[torch.Tensor]


class GlipBackbone(nn.Module):
    """``forward(images [B, 3, H, W])`` -> ``[P3, P4, P5, P6, P7]``.

    ``images`` are BGR-255-normalised and zero-padded to a multiple of 32 (microsoft/GLIP
    maskrcnn_benchmark/data/transforms/transforms.py and ``to_image_list`` in structures/image_list.py);
    other sizes also work (Swin pads to its patch and window sizes internally).
    """

    def __init__(self, swin: SwinConfig, fpn: FpnConfig) -> None:
        super().__init__()
        self.body = SwinTransformer(swin)
        self.fpn = FPN(swin.stage_channels[-3:], fpn.out_channels, fpn.drop_block_prob, fpn.drop_block_size)
        self.out_channels = fpn.out_channels

    @classmethod
    def from_config(cls, config: GlipConfig) -> "GlipBackbone":
        return cls(config.swin, config.fpn)

    def features(self, images: torch.Tensor) -> BackboneFeatures:
        """The Swin stage maps and the pyramid built on them (for parity checks and feature taps)."""
        stages = self.body(images)
        return BackboneFeatures(stages=stages, pyramid=self.fpn(stages[-3:]))

    def vision_blocks(self) -> list[VisionBlock]:
        """The Swin blocks, each with its ``extra_tokens`` prompt slot (see :mod:`bench.models.glip.swin`)."""
        return self.body.blocks()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.features(images).pyramid
