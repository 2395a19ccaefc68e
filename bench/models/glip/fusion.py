"""GLIP's image-text fusion: bidirectional multi-head attention inside every VL-DyHead block.

Module tree and state-dict names are the official ones (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/vldyhead.py,
``VLFuse``; maskrcnn_benchmark/utils/fuse_helper.py, ``BiAttentionBlockForCheckpoint``, ``BiMultiHeadAttention``)::

    VLFuse                      rpn.head.dyhead_tower.{3i}
      b_attn: BiAttentionBlock    .b_attn.{layer_norm_v, layer_norm_l, gamma_v, gamma_l}
        attn: BiMultiHeadAttention  .b_attn.attn.{v_proj, l_proj, values_v_proj, values_l_proj,
                                                  out_v_proj, out_l_proj}

Extension point: :class:`BiMultiHeadAttention` is GLIP's *fusion layer* as the model interface
exposes it (``DyHeadTower.fusion_layers()``). It holds the frozen projections (``v_proj`` and
``l_proj`` produce the shared logits) and a ``token_extension`` slot, ``None`` by default. A module
placed there (:class:`bench.models.base.TokenExtension`) receives the layer-normalised inputs right
before attention and may append rows. The first ``N_v`` / ``T`` rows must be the inputs themselves;
the layer attends over the extended sequences and drops the ``K_v`` / ``K_l`` appended rows from its
outputs, so the residual and everything outside see the original shapes. With the slot empty nothing extra runs: the result is
bit-identical to the official computation. SDPT (wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py,
``BiMultiHeadAttention.forward``) installs its projected
prototype tokens here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bench.errors import BenchError
from bench.models.base import TokenExtension, extend_tokens
from bench.models.glip.config import GlipConfig
from bench.models.glip.text_features import TextFeatures

# GLIP's mask for padded tokens on the image side (microsoft/GLIP maskrcnn_benchmark/utils/fuse_helper.py,
# BiMultiHeadAttention.forward).
MASKED_TOKEN_LOGIT = -9e15


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (or float64 if it already is): softmax and the ±clamp run at full precision
    even under bf16/fp16 autocast, where the official code relies on the clamps against overflow."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def subtract_row_max(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus the maximum of each row (last dim), the maximum taken as a constant.

    The shift only keeps the softmax that follows in range and softmax does not depend on it, so its
    gradient is zero: differentiating ``amax`` would spend passes over the whole ``[B*h, T, N_v]`` map
    (an equality mask, a count, a division) on rounding noise. The official code subtracts
    ``torch.max(attn_weights_T, dim=-1, keepdim=True)[0]`` (microsoft/GLIP maskrcnn_benchmark/utils/
    fuse_helper.py, BiMultiHeadAttention.forward); the values are the same.
    """
    return x - x.detach().amax(dim=-1, keepdim=True)


def clamp_where_binding(x: torch.Tensor, bound: float) -> torch.Tensor:
    """``x.clamp(-bound, bound)``, computed only when some value of ``x`` lies outside the bounds.

    The official code clamps the fusion logits at ±50000 against fp16 overflow; with real weights and
    inputs the logits stay orders of magnitude inside, where the clamp returns ``x`` unchanged and
    passes the gradient unchanged, yet still costs a pass forward and a masked select backward over
    the whole ``[B*h, N_v, T]`` map (10% of a glip-nano SDPT step). One reduction decides; when a
    value is out of range the official clamp runs, so the values and gradients are the official ones
    either way.
    """
    low, high = x.detach().aminmax()
    if -bound <= float(low) and float(high) <= bound:
        return x
    return x.clamp(-bound, bound)


def largest_logit(query: torch.Tensor, key: torch.Tensor) -> float:
    """An upper bound on every ``|query . key|`` over the last dimension: the largest query norm times
    the largest key norm (Cauchy-Schwarz). Below a clamp's bound it proves the clamp cannot bind, so
    fused attention kernels, which have no clamp, compute the same function."""
    return float(query.detach().float().norm(dim=-1).amax() * key.detach().float().norm(dim=-1).amax())


class BiMultiHeadAttention(nn.Module):
    """One shared logit matrix between image positions and text tokens, softmaxed both ways.

    Inputs: ``v`` ``[B, N_v, v_dim]`` (all pyramid levels flattened and concatenated), ``l``
    ``[B, T, l_dim]``, ``text_mask`` ``[B, T]``. Returns the updates ``(Δv [B, N_v, v_dim],
    Δl [B, T, l_dim])`` (microsoft/GLIP maskrcnn_benchmark/utils/fuse_helper.py, ``BiMultiHeadAttention.forward``).
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float, clamp: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise BenchError(f"The fusion embed_dim ({embed_dim}) must be divisible by its num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp = clamp
        self.v_proj = nn.Linear(v_dim, embed_dim)  # image queries
        self.l_proj = nn.Linear(l_dim, embed_dim)  # text keys
        self.values_v_proj = nn.Linear(v_dim, embed_dim)  # values for the text update
        self.values_l_proj = nn.Linear(l_dim, embed_dim)  # values for the image update
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        self.token_extension: TokenExtension | None = None
        # "eager": the official computation; "sdpa": fused kernels wherever they compute the same
        # (see _fused_is_equivalent), set by GLIP.set_attention_kernel.
        self.attention_kernel = "eager"

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, E]`` -> ``[B * heads, L, head_dim]`` (the official head layout)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2).reshape(b * self.num_heads, n, self.head_dim)

    def _merge_heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``[B * heads, L, head_dim]`` -> ``[B, L, E]``."""
        return x.view(batch, self.num_heads, -1, self.head_dim).transpose(1, 2).reshape(batch, -1, self.embed_dim)

    def attention_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """``(v_proj, l_proj)``: the image-query and text-key projections (:class:`bench.models.base.FusionLayer`)."""
        return self.v_proj, self.l_proj

    def _official_attention(self, query: torch.Tensor, key: torch.Tensor, value_v: torch.Tensor, value_l: torch.Tensor,
                            text_mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both updates ``[B*h, N_v, d]``, ``[B*h, T, d]`` as the official code computes them: one logit
        map, clamped, softmaxed both ways in at least float32."""
        logits = _at_least_fp32(torch.bmm(query, key.transpose(1, 2)))  # [B*h, N_v, T]
        logits = clamp_where_binding(logits, self.clamp)

        # Text -> image: softmax over ALL image positions of the max-subtracted logits; no mask on
        # this side, so padded tokens are updated too (microsoft/GLIP, maskrcnn_benchmark/utils/fuse_helper.py,
        # BiMultiHeadAttention.forward).
        logits_t = logits.transpose(1, 2)
        logits_t = clamp_where_binding(subtract_row_max(logits_t), self.clamp)
        probs_l = logits_t.softmax(dim=-1)

        # Image -> text: padded tokens get -9e15 and real ones +1, which softmax ignores; kept as the
        # official code adds it (same function).
        token_bias = torch.where(text_mask == 0, MASKED_TOKEN_LOGIT, 1.0).to(logits.dtype)
        logits_v = logits.view(batch, self.num_heads, query.shape[1], key.shape[1]) + token_bias[:, None, None, :]
        probs_v = logits_v.view(batch * self.num_heads, query.shape[1], key.shape[1]).softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
        return torch.bmm(probs_v.to(value_l.dtype), value_l), torch.bmm(probs_l.to(value_v.dtype), value_v)

    def _fused_is_equivalent(self, query: torch.Tensor, key: torch.Tensor) -> bool:
        """Whether fused kernels compute what :meth:`_official_attention` does: no dropout acts, and
        neither clamp can bind, which holds when twice the largest possible logit (the product of the
        largest query and key norms, by Cauchy-Schwarz) stays inside the bound."""
        if self.training and self.dropout > 0:
            return False
        return 2 * largest_logit(query, key) <= self.clamp

    def _fused_attention(self, query: torch.Tensor, key: torch.Tensor, value_v: torch.Tensor, value_l: torch.Tensor,
                         text_mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same two updates with ``F.scaled_dot_product_attention``, once per direction (its fused
        kernels never hold the ``[B*h, N_v, T]`` maps); padded tokens are masked out of the image side."""
        heads, dim = self.num_heads, self.head_dim
        q = query.view(batch, heads, -1, dim)
        k = key.view(batch, heads, -1, dim)
        real_tokens = (text_mask != 0)[:, None, None, :]
        out_v = F.scaled_dot_product_attention(q, k, value_l.view(batch, heads, -1, dim), attn_mask=real_tokens, scale=1.0)
        out_l = F.scaled_dot_product_attention(k, q, value_v.view(batch, heads, -1, dim), scale=1.0)
        return out_v.reshape(batch * heads, -1, dim), out_l.reshape(batch * heads, -1, dim)

    def forward(self, v: torch.Tensor, l: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_v, n_l = v.shape[1], l.shape[1]
        if self.token_extension is not None:
            v, l, text_mask = extend_tokens(self.token_extension, v, l, text_mask)
        batch, tgt_len, src_len = v.shape[0], v.shape[1], l.shape[1]

        query = self._split_heads(self.v_proj(v) * self.scale)
        key = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))

        if self.attention_kernel == "sdpa" and self._fused_is_equivalent(query, key):
            out_v, out_l = self._fused_attention(query, key, value_v, value_l, text_mask, batch)
        else:
            out_v, out_l = self._official_attention(query, key, value_v, value_l, text_mask, batch)
        out_v, out_l = self._merge_heads(out_v, batch), self._merge_heads(out_l, batch)
        if tgt_len != n_v or src_len != n_l:  # strip the extension's rows (per-row ops from here on)
            out_v, out_l = out_v[:, :n_v], out_l[:, :n_l]
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """Pre-LayerNorm, bidirectional attention and layer-scaled residuals (official
    ``BiAttentionBlockForCheckpoint``, named ``b_attn``).

    [Q] The residual is added to the *normalised* inputs, ``v̂ + gamma_v * Δv`` (microsoft/GLIP
    maskrcnn_benchmark/utils/fuse_helper.py, ``BiAttentionBlockForCheckpoint.single_attention_call``);
    drop-path is 0 in GLIP and therefore absent. Inputs/outputs: ``v`` ``[B, N_v, v_dim]``, ``l``
    ``[B, T, l_dim]``, ``text_mask`` ``[B, T]``.
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float, clamp: float,
                 init_values: float) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout, clamp)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), init_values))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), init_values))

    def forward(self, v: torch.Tensor, l: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_hat, l_hat = self.layer_norm_v(v), self.layer_norm_l(l)
        delta_v, delta_l = self.attn(v_hat, l_hat, text_mask)
        return v_hat + self.gamma_v * delta_v, l_hat + self.gamma_l * delta_l


class VLFuse(nn.Module):
    """Tower module ``3i``: early image-text fusion of all pyramid levels at once.

    ``forward(visual, text)``: ``visual`` is a list of ``[B, C, H_l, W_l]`` maps (P3..P7), flattened
    row-major and concatenated into one sequence for a single attention call (microsoft/GLIP
    maskrcnn_benchmark/utils/fuse_helper.py, ``BiAttentionBlockForCheckpoint.forward``), then split
    back; returns ``(visual, text)`` with the same shapes.

    ``use_checkpoint`` (config ``dyhead.use_checkpoint``) recomputes the block in the backward pass to
    save memory; it is active whenever gradients are enabled (also in eval mode, where a method such
    as SDPT trains tokens inside the frozen block) and changes no number.
    """

    def __init__(self, config: GlipConfig) -> None:
        super().__init__()
        fusion = config.fusion
        self.b_attn = BiAttentionBlock(
            v_dim=config.dyhead.channels,
            l_dim=config.text.hidden_size,
            embed_dim=fusion.embed_dim,
            num_heads=fusion.num_heads,
            dropout=fusion.dropout,
            clamp=fusion.clamp,
            init_values=1.0 / config.dyhead.num_convs,  # official init; checkpoints overwrite it
        )
        self.use_checkpoint = config.dyhead.use_checkpoint

    @property
    def fusion_layer(self) -> BiMultiHeadAttention:
        """The attention that holds the projections and the ``token_extension`` slot."""
        return self.b_attn.attn

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> tuple[list[torch.Tensor], TextFeatures]:
        sizes = [tuple(level.shape[-2:]) for level in visual]
        v = torch.cat([level.flatten(2).transpose(1, 2) for level in visual], dim=1)  # [B, sum(H*W), C]
        if self.use_checkpoint and torch.is_grad_enabled():
            v, l = checkpoint(self.b_attn, v, text.hidden, text.mask, use_reentrant=False)
        else:
            v, l = self.b_attn(v, text.hidden, text.mask)
        batch, channels = v.shape[0], v.shape[2]
        levels = torch.split(v.transpose(1, 2), [h * w for h, w in sizes], dim=2)
        fused = [level.reshape(batch, channels, h, w) for level, (h, w) in zip(levels, sizes)]
        return fused, text.with_hidden(l)
