"""The VL-DyHead tower: ``[VLFuse, BertEncoderLayer, DyConv] x num_convs`` (microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``VLDyHead.__init__``).

Built as ``rpn.head.dyhead_tower``: module ``3i`` fuses image and text, ``3i+1`` refines the text
with a BERT layer (present in every block, the last included, because GLIP-T/L score tokens with the
fused text), ``3i+2`` runs DyHead's vision path. Every module maps ``(visual, text)`` to a new
``(visual, text)``: ``visual`` a list of ``[B, C, H_l, W_l]`` maps (P3..P7), ``text`` a
:class:`TextFeatures`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bench.models.glip.bert_layer import BertEncoderLayer
from bench.models.glip.config import GlipConfig
from bench.models.glip.dyconv import DyConv
from bench.models.glip.fusion import BiMultiHeadAttention, VLFuse
from bench.models.glip.text_features import TextFeatures


@dataclass(frozen=True)
class TowerStep:
    """The output of tower module ``index`` (for parity reports): its class name and ``(visual, text)``."""

    index: int
    name: str
    visual: list[torch.Tensor]
    text: TextFeatures


class DyHeadTower(nn.ModuleList):
    """The tower's modules in official order, so their state-dict keys are ``{index}.*``.

    ``checkpoint_modules`` recomputes every module in the backward pass (activation checkpointing of
    the whole tower, :meth:`GLIP.set_activation_checkpointing`); it changes no number.
    """

    checkpoint_modules = False

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> tuple[list[torch.Tensor], TextFeatures]:
        recompute = self.checkpoint_modules and torch.is_grad_enabled()
        for module in self:
            if recompute:
                visual, text = checkpoint(module, visual, text, use_reentrant=False)
            else:
                visual, text = module(visual, text)
        return visual, text

    def forward_steps(self, visual: list[torch.Tensor], text: TextFeatures) -> list[TowerStep]:
        """Run the tower and keep every module's output; the last step is the tower's output."""
        steps = []
        for index, module in enumerate(self):
            visual, text = module(visual, text)
            steps.append(TowerStep(index, type(module).__name__, visual, text))
        return steps

    def fusion_layers(self) -> list[BiMultiHeadAttention]:
        """Every image-text fusion layer, first block first: each exposes ``v_proj``, ``l_proj``,
        ``values_v_proj``, ``values_l_proj``, ``out_v_proj``, ``out_l_proj`` and the
        ``token_extension`` slot (see :mod:`bench.models.glip.fusion`)."""
        return [module.fusion_layer for module in self if isinstance(module, VLFuse)]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the fusion blocks in the backward pass (training only; no numerical effect)."""
        for module in self:
            if isinstance(module, VLFuse):
                module.use_checkpoint = enabled


def build_dyhead_tower(config: GlipConfig) -> DyHeadTower:
    """The ``3 * config.dyhead.num_convs`` tower modules for ``config`` (weights at their init)."""
    modules: list[nn.Module] = []
    for _ in range(config.dyhead.num_convs):
        modules += [
            VLFuse(config),
            BertEncoderLayer(config.text),
            DyConv(config.dyhead.channels, config.dyhead.gn_groups, config.dyhead.deformable),
        ]
    return DyHeadTower(modules)
