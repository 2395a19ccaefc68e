"""Extension slots added to ``transformers``' Grounding DINO modules without touching their weights.

Each class here is a subclass of a ``transformers`` module that adds one slot and otherwise defers to
the parent: :func:`adopt` turns a built (or loaded) module into the subclass in place, so parameter
names, state-dict keys and loaded weights stay exactly as ``transformers`` made them, and with every
slot empty the forward pass *is* the parent's (the same code runs, bit for bit).

* :class:`ExtensibleBiAttention` (``encoder.layers[i].fusion_layer.attn``; for MM-Grounding-DINO's
  identical copy of the module, :class:`ExtensibleMMBiAttention`): the fusion layer of the model interface, with ``attention_projections()`` = ``(vision_proj, text_proj)`` and a
  ``token_extension`` slot (:class:`bench.models.base.TokenExtension`). Appended image rows are never
  masked; appended text rows get the mask the extension returns. The appended rows are cut from the
  attention outputs after ``out_vision_proj`` / ``out_text_proj``, which act row by row (and from
  both axes of the returned attention weights).
* :class:`PromptableSwinLayer` (every Swin block): an ``extra_tokens`` slot. The prompts
  ``[B, P, C]`` are normalised by the block's ``layernorm_before`` and join the attention of every
  window as ``P`` extra keys and values with zero relative-position bias, never hidden by the
  shifted-window mask; only image tokens are queries, so every shape downstream is unchanged (the same
  rule as GLIP's Swin, :mod:`bench.models.glip.swin`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoBiMultiHeadAttention
from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MMGroundingDinoBiMultiHeadAttention
from transformers.models.swin.modeling_swin import SwinAttention, SwinLayer

from bench.models.base import TokenExtension, checked_block_prompts, extend_tokens


def adopt(module: nn.Module, subclass: type[nn.Module]) -> None:
    """Make ``module`` an instance of ``subclass`` (a parameter-free subclass of its exact type) and
    give it the subclass's empty slots."""
    if type(module) not in subclass.__bases__:
        raise TypeError(f"{subclass.__name__} extends {[b.__name__ for b in subclass.__bases__]}, not {type(module).__name__}.")
    module.__class__ = subclass
    subclass.init_slots(module)


class TokenExtensionSlot:
    """The ``token_extension`` slot, mixed into a Grounding DINO bidirectional image-text attention."""

    token_extension: TokenExtension | None

    def init_slots(self) -> None:
        self.token_extension = None

    def attention_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """``(vision_proj, text_proj)``: image queries and text keys of the shared logits."""
        return self.vision_proj, self.text_proj

    def forward(
        self,
        vision_features: torch.Tensor,
        text_features: torch.Tensor,
        vision_attention_mask: torch.BoolTensor | None = None,
        text_attention_mask: torch.BoolTensor | None = None,
    ):
        if self.token_extension is None:
            return super().forward(vision_features, text_features, vision_attention_mask, text_attention_mask)
        n_v, n_l = vision_features.shape[1], text_features.shape[1]
        if text_attention_mask is None:  # transformers' masks are True at padding; extensions speak 1 = real
            real_text = text_features.new_ones(text_features.shape[:2], dtype=torch.long)
        else:
            real_text = (~text_attention_mask).long()
        vision, text, real_text = extend_tokens(self.token_extension, vision_features, text_features, real_text)
        if vision_attention_mask is not None:
            vision_attention_mask = F.pad(vision_attention_mask, (0, vision.shape[1] - n_v), value=False)
        (delta_v, weights_v), (delta_t, weights_t) = super().forward(vision, text, vision_attention_mask, real_text == 0)
        return (delta_v[:, :n_v], weights_v[:, :n_v, :n_l]), (delta_t[:, :n_l], weights_t[:, :n_l, :n_v])


class ExtensibleBiAttention(TokenExtensionSlot, GroundingDinoBiMultiHeadAttention):
    """Grounding DINO's bidirectional image-text attention with a ``token_extension`` slot."""


class ExtensibleMMBiAttention(TokenExtensionSlot, MMGroundingDinoBiMultiHeadAttention):
    """MM-Grounding-DINO's bidirectional image-text attention with a ``token_extension`` slot."""


class PromptableSwinAttention(SwinAttention):
    """Window attention that also attends to per-image prompt tokens (keys and values only)."""

    def init_slots(self) -> None:
        pass

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                window_prompts: torch.Tensor | None = None, **kwargs):
        if window_prompts is None:
            return super().forward(hidden_states, attention_mask, **kwargs)
        windows, length, channels = hidden_states.shape
        per_image = windows // window_prompts.shape[0]
        prompts = window_prompts.repeat_interleave(per_image, dim=0)  # windows are grouped image by image
        keys_in = torch.cat([hidden_states, prompts], dim=1)
        heads = self.num_attention_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(windows, x.shape[1], heads, self.head_dim).transpose(1, 2)

        query, key, value = split(self.q_proj(hidden_states)), split(self.k_proj(keys_in)), split(self.v_proj(keys_in))
        bias = self.relative_position_bias()  # [1, heads, N, N]
        if attention_mask is not None:  # the shifted-window mask [nW, N, N], the same for every image
            bias = bias + attention_mask.unsqueeze(1).repeat(windows // attention_mask.shape[0], 1, 1, 1)
        bias = F.pad(bias, (0, prompts.shape[1]))  # prompts: no position bias, never masked
        scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling + bias
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        probs = F.dropout(probs, p=self.attention_dropout if self.training else 0.0, training=self.training)
        out = torch.matmul(probs, value).transpose(1, 2).reshape(windows, length, channels)
        return self.o_proj(out), probs


class PromptableSwinLayer(SwinLayer):
    """A Swin block (``transformers``' ``SwinLayer``) with an ``extra_tokens`` slot."""

    def init_slots(self) -> None:
        self.extra_tokens = None
        adopt(self.attention, PromptableSwinAttention)

    @property
    def channels(self) -> int:
        return self.layernorm_before.normalized_shape[0]

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False, **kwargs):
        if self.extra_tokens is None:
            return super().forward(hidden_states, input_dimensions, always_partition, **kwargs)
        prompts = checked_block_prompts(self.extra_tokens(hidden_states), hidden_states, self.channels)
        return super().forward(
            hidden_states, input_dimensions, always_partition, window_prompts=self.layernorm_before(prompts), **kwargs
        )


# The transformers modules that get slots, and the subclass each becomes.
SLOTTED = {
    GroundingDinoBiMultiHeadAttention: ExtensibleBiAttention,
    MMGroundingDinoBiMultiHeadAttention: ExtensibleMMBiAttention,
    SwinLayer: PromptableSwinLayer,
}


def add_slots(model: nn.Module) -> None:
    """Give every fusion attention and Swin block of a (MM-)Grounding DINO its extension slot."""
    for module in list(model.modules()):
        if type(module) in SLOTTED:
            adopt(module, SLOTTED[type(module)])
