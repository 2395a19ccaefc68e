"""GLIP's feature pyramid: ``backbone.fpn`` (microsoft/GLIP maskrcnn_benchmark/modeling/backbone/fpn.py, ``FPN``).

Inputs are the last three Swin stages C3, C4, C5 (strides 8, 16, 32); outputs P3..P7 (strides
8..128), all with ``out_channels`` channels. State-dict names are the official ones:
``fpn_inner{2,3,4}`` (1x1 laterals), ``fpn_layer{2,3,4}`` (3x3 outputs), ``top_blocks.{p6,p7}``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A plain convolution with bias and "same" padding, initialised like maskrcnn_benchmark's
    ``conv_with_kaiming_uniform`` (kaiming-uniform with a=1, zero bias); checkpoints overwrite it."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class DropBlock2D(nn.Module):
    """DropBlock as in maskrcnn_benchmark (``layers/dropblock.py``); identity in eval or with ``prob`` 0.

    ``[B, C, H, W]`` -> same shape. Block centres are drawn per image and position with rate
    ``prob / block_size**2`` (no correction for the map size), each centre zeroes a
    ``block_size``-square shared by **all channels**, and the result is rescaled by
    ``mask.numel() / mask.sum()`` over the whole batch. ``torchvision.ops.drop_block2d`` is a
    different regulariser (a mask per channel, a size-corrected rate, centres only where the block
    fits), so it is not used here.
    """

    def __init__(self, prob: float, block_size: int) -> None:
        super().__init__()
        self.prob = prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        b, _, h, w = x.shape
        centres = (torch.rand(b, 1, h, w, device=x.device) < self.prob / self.block_size**2).to(x.dtype)
        dropped = F.max_pool2d(centres, self.block_size, stride=1, padding=self.block_size // 2)[..., :h, :w]
        keep = 1 - dropped
        # The official code divides by keep.sum() unguarded (NaN when everything is dropped).
        return x * keep * (keep.numel() / keep.sum().clamp_min(1))


class LastLevelP6P7(nn.Module):
    """``P6 = p6(P5)`` (3x3, stride 2) and ``P7 = p7(relu(P6))``.

    [Q] GLIP builds it with in_channels == out_channels, which makes the official code take P5,
    not C5, as the input of P6 (``LastLevelP6P7.use_P5`` in microsoft/GLIP
    maskrcnn_benchmark/modeling/backbone/fpn.py).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = _conv(channels, channels, 3, stride=2)
        self.p7 = _conv(channels, channels, 3, stride=2)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """``forward([C3, C4, C5])`` -> ``[P3, P4, P5, P6, P7]``, each ``[B, out_channels, H_l, W_l]``.

    Top-down: ``last = inner4(C5)``, ``P5 = layer4(last)``; then for C4 and C3
    ``last = inner(C) + nearest_upsample(last, size of the lateral)`` and
    ``P = layer(DropBlock(last))``, DropBlock acting in training only. No norm, no activation.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, drop_block_prob: float = 0.0, drop_block_size: int = 3
    ) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"FPN takes the channel widths of C3, C4, C5; got {list(in_channels)}")
        # [Q] Naming offset: fpn_inner2/fpn_layer2 consume C3 (stride 8). The official FPN is given
        # in_channels [0, C3, C4, C5] and skips index 1 (the unused stride-4 stage).
        for level, channels in zip((2, 3, 4), in_channels):
            self.add_module(f"fpn_inner{level}", _conv(channels, out_channels, 1))
            self.add_module(f"fpn_layer{level}", _conv(out_channels, out_channels, 3))
        self.drop_block = DropBlock2D(drop_block_prob, drop_block_size)
        self.top_blocks = LastLevelP6P7(out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = features
        last = self.fpn_inner4(c5)
        results = [self.fpn_layer4(last)]
        for feature, level in ((c4, 3), (c3, 2)):
            lateral = getattr(self, f"fpn_inner{level}")(feature)
            if lateral.shape[-2:] != last.shape[-2:]:
                last = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral + last
            results.insert(0, getattr(self, f"fpn_layer{level}")(self.drop_block(last)))
        return results + self.top_blocks(results[-1])
