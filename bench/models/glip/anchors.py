"""GLIP's ATSS anchors: one square anchor per feature-map location and level.

The anchors depend only on the feature-map sizes, i.e. on the *padded* batch, so every image of
a batch shares them. The official generator also records a per-image ``visibility`` field from
the un-padded size, but neither the ATSS loss nor the post-processing reads it
(microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py, ``ATSSLossComputation``, and rpn/inference.py,
``ATSSPostProcessor``), so it is not reproduced. The checkpoint's
``rpn.anchor_generator.cell_anchors.*`` buffers are recomputed here and never loaded.
"""

from __future__ import annotations

import torch

from bench.models.glip.config import AnchorConfig


def cell_anchor(stride: int, size: float) -> torch.Tensor:
    """The level's base anchor ``[4]`` (xyxy), centred on the first location's pixel centre.

    Legacy "+1" convention: a box of side ``size`` spans ``size - 1`` pixels, centred at
    ``(stride - 1) / 2`` (stride 8, size 64 -> ``[-28, -28, 35, 35]``).
    """
    centre = (stride - 1) / 2.0
    half = (size - 1) / 2.0
    # Computed in float64 and rounded once, as the official numpy code does.
    return torch.tensor([centre - half, centre - half, centre + half, centre + half], dtype=torch.float64).float()


def grid_anchors(
    feature_sizes: list[tuple[int, int]], config: AnchorConfig, device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """Anchors of every level, ``[H_l * W_l, 4]`` xyxy in resized-image pixels, row-major (y outer).

    ``feature_sizes`` are the ``(H_l, W_l)`` of the levels P3.. in order; ``config`` gives one stride
    and one anchor size per level.
    """
    anchors = []
    for (height, width), stride, size in zip(feature_sizes, config.strides, config.sizes, strict=True):
        shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
        shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 4)
        anchors.append(shifts + cell_anchor(stride, size).to(device))
    return anchors
