"""MaPLe-style coupled prompts (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023).

Text side: ``context_tokens`` (M) learnable vectors after ``[CLS]`` at the text input, as in
:mod:`methods.coop` (positive maps shift by M), and for each of the next ``J - 1`` text layers a fresh
set of M vectors that replaces the context tokens' hidden states before that layer (MaPLe's deep
"compound" prompts, through the text encoder's ``layer_input_hook``). Vision side: the first J Swin
blocks (in ``vision_blocks()`` order) get M prompt tokens each through their ``extra_tokens`` slot,
*computed* from the text prompts of the same depth by a learned linear coupling ``D_text -> C_block``
(with bias); the vision prompts have no parameters of their own, which is what couples the two
modalities.

All parameters live in one module in the ``input_embedding_hook`` slot; the layer hook and the block
slots hold plain views of it (not modules), so each tensor is stored once.

Defaults: M = 2, J = 9 (MaPLe's official configuration for ViT-B/16), capped at the number of text
layers and of vision blocks of the model (J_eff = min(prompt_depth, text layers, vision blocks));
prompts are initialised N(0, 0.02^2) (MaPLe's random initialisation; its option of initialising the
first prompts from the embeddings of "a photo of a" is not offered), couplings with PyTorch's
``nn.Linear`` default (as MaPLe). MaPLe trains with SGD (lr 3.5e-3, weight decay 5e-4), which does not
carry over to AdamW; lr 1e-2 and weight decay 0.01 are ours, the AdamW setting of every prompt method
here (:data:`methods.coop.PROMPT_LR_SOURCE`). Trainable: ``J*M*D + sum_{j<J} (D + 1) * C_j``.

Effective count: ``M * (D - 2) + (J - 1) * M * D + sum_{j<J} M * (C_j - 2)``. The input context
reaches BERT only through its embedding LayerNorm, as CoOp's (two directions per vector lost); a deep
prompt replaces hidden states, which enter attention and the residual un-normalised (all ``D`` act).
Given its text prompts (``M <= D + 1`` of them, in general position), a coupling can give its block
any ``M x C_j`` prompts, of which the block's LayerNorm ignores two directions per prompt; the
couplings' other ``(D + 1 - M) * C_j`` directions per block change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.options import AT_LEAST_ONE
from bench.tuning.accounting import LAYER_NORM_INVARIANCES
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under
from methods.coop import PROMPT_LR_SOURCE, PROMPT_WEIGHT_DECAY_SOURCE, TextContext, text_width

MAPLE_CONFIG = "muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"


@dataclass(frozen=True)
class MapleConfig(MethodConfig):
    """``context_tokens``: M per layer; ``prompt_depth``: J, the number of prompted text layers and
    vision blocks (capped at what the model has)."""

    lr: float = 1e-2
    weight_decay: float = 0.01
    context_tokens: int = 2
    prompt_depth: int = 9

    limits = {"context_tokens": AT_LEAST_ONE, "prompt_depth": AT_LEAST_ONE}

    sources = {
        "lr": PROMPT_LR_SOURCE + f"; MaPLe's SGD rate 3.5e-3 ({MAPLE_CONFIG}) does not transfer",
        "weight_decay": PROMPT_WEIGHT_DECAY_SOURCE + "; MaPLe's 5e-4 is an SGD L2 penalty",
        "context_tokens": f"official code: {MAPLE_CONFIG} (N_CTX 2)",
        "prompt_depth": f"official code: {MAPLE_CONFIG} (PROMPT_DEPTH 9, for ViT-B/16's 12 layers)",
    }


class CoupledPrompts(TextContext):
    """Input context (``context`` ``[M, D]``), deep text prompts (``deep`` ``[J-1, M, D]``) and the
    couplings to the vision blocks (``couplings[j]``: ``D -> C_j``)."""

    def __init__(self, tokens: int, width: int, block_channels: list[int], std: float = 0.02) -> None:
        super().__init__(tokens, width, std)
        self.deep = nn.Parameter(torch.randn(len(block_channels) - 1, tokens, width) * std)
        self.couplings = nn.ModuleList(nn.Linear(width, c) for c in block_channels)

    def text_prompts(self, depth: int) -> torch.Tensor:
        """``[M, D]``: the text prompts at layer ``depth`` (0 = the input context)."""
        return self.context if depth == 0 else self.deep[depth - 1]

    def layer_input(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if not 1 <= index <= self.deep.shape[0]:
            return hidden
        m = self.token_shift
        prompts = self.deep[index - 1].to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return torch.cat([hidden[:, :1], prompts, hidden[:, 1 + m :]], dim=1)

    def vision_prompts(self, depth: int, x: torch.Tensor) -> torch.Tensor:
        prompts = self.couplings[depth](self.text_prompts(depth))
        return prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)


class _LayerView:
    """The text encoder's ``layer_input_hook``: a view of the owning :class:`CoupledPrompts`."""

    def __init__(self, owner: CoupledPrompts) -> None:
        self.owner = owner

    def __call__(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.owner.layer_input(index, hidden)


class _BlockView:
    """A vision block's ``extra_tokens``: the coupled prompts of one depth."""

    def __init__(self, owner: CoupledPrompts, depth: int) -> None:
        self.owner, self.depth = owner, depth

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner.vision_prompts(self.depth, x)


@register_method("maple", MapleConfig, "MaPLe-style coupled prompts: deep text prompts, vision prompts mapped from them by linear couplings",
                 family="text and image prompts")
class Maple(Method):
    slots = ("input_embedding_hook", "layer_input_hook", "extra_tokens")
    identity_at_init = False

    def _depth(self, model: DetectorBase) -> int:
        return min(self.config.prompt_depth, model.text_encoder().num_layers(), len(model.vision_blocks()))

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        encoder, depth = model.text_encoder(), self._depth(model)
        if encoder.input_embedding_hook is not None or encoder.layer_input_hook is not None:
            raise BenchError("maple needs the text encoder's input_embedding_hook and layer_input_hook slots, but one is already taken.")
        if self.config.context_tokens + 2 > model.text_slots:
            raise BenchError(f"context_tokens={self.config.context_tokens} leaves no room for a caption in {model.text_slots} text slots.")
        blocks = model.vision_blocks()[:depth]
        owner = CoupledPrompts(self.config.context_tokens, text_width(model), [b.channels for b in blocks])
        encoder.input_embedding_hook = owner
        encoder.layer_input_hook = _LayerView(owner)
        for j, block in enumerate(blocks):
            block.module.extra_tokens = _BlockView(owner, j)
        return trainable_under(model, owner)

    def expected_trainable(self, model: DetectorBase) -> int:
        depth, width = self._depth(model), text_width(model)
        channels = [b.channels for b in model.vision_blocks()[:depth]]
        return depth * self.config.context_tokens * width + sum((width + 1) * c for c in channels)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """Text prompts less the input context's LayerNorm directions, plus per block the ``M x C_j``
        prompts the coupling can reach less the block's LayerNorm directions (module docstring)."""
        tokens, depth, width = self.config.context_tokens, self._depth(model), text_width(model)
        channels = [b.channels for b in model.vision_blocks()[:depth]]
        text = depth * tokens * width - tokens * LAYER_NORM_INVARIANCES
        return text + sum(tokens * (c - LAYER_NORM_INVARIANCES) for c in channels)
