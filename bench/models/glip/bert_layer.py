"""Tower module ``3i+1``: one post-LayerNorm BERT layer on the fused text (microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``BertEncoderLayer``).

Written out rather than taken from ``transformers`` (whose layer internals change between versions)
so that GLIP's patched ``rpn/modeling_bert.py`` is reproduced exactly: attention scores are clamped
to ±50000 *before* the padding mask is added, and the feed-forward activations are clamped to
±50000 around the activation and around the output LayerNorm (no-ops in float32, guards in fp16).
State-dict names follow ``transformers``' ``BertLayer``: ``attention.self.{query,key,value}``,
``attention.output.{dense,LayerNorm}``, ``intermediate.dense``, ``output.{dense,LayerNorm}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from bench.errors import BenchError
from bench.models.glip.config import TextConfig
from bench.models.glip.fusion import largest_logit
from bench.models.glip.text_features import TextFeatures

# modeling_bert.py's clamp_values() and the CLAMP_BERTATTN_* flags, all on in GLIP.
BERT_CLAMP = 50000.0


class _SelfAttention(nn.Module):
    """Multi-head self-attention over tokens; returns the merged context ``[B, T, D]``."""

    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % num_heads:
            raise BenchError(f"The BERT hidden size ({hidden}) must be divisible by its attention heads ({num_heads}).")
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.attention_kernel = "eager"  # or "sdpa" where it computes the same (GLIP.set_attention_kernel)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def _fused_is_equivalent(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """No dropout acts and the ±clamp cannot bind: the largest possible score (query norm times key
        norm over sqrt(head_dim), by Cauchy-Schwarz) stays inside it."""
        if self.training and self.dropout.p > 0:
            return False
        return largest_logit(q, k) / math.sqrt(self.head_dim) <= BERT_CLAMP

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if self.attention_kernel == "sdpa" and self._fused_is_equivalent(q, k):
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=(mask != 0)[:, None, None, :]).permute(0, 2, 1, 3)
            return context.reshape(x.shape[0], x.shape[1], -1)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        # [Q] clamp before the mask is added (GLIP's patched BertSelfAttention); softmax in >= fp32.
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)).clamp(-BERT_CLAMP, BERT_CLAMP)
        # Extended mask as transformers >= 4.31 builds it: 0 for real tokens, finfo.min for padding
        # (old versions used -10000; identical after softmax; official: ``BertEncoderLayer.forward`` calls
        # transformers' ``get_extended_attention_mask``).
        padding = (1.0 - mask[:, None, None, :].to(scores.dtype)) * torch.finfo(scores.dtype).min
        probs = self.dropout((scores + padding).softmax(dim=-1))
        context = torch.matmul(probs.to(v.dtype), v).permute(0, 2, 1, 3)
        return context.reshape(x.shape[0], x.shape[1], -1)


class _DenseAddNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``, optionally clamped before and after the norm."""

    def __init__(self, in_dim: int, hidden: int, eps: float, dropout: float, clamp: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.clamp = clamp

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.dense(x))
        if not self.clamp:
            return self.LayerNorm(x + residual)
        x = self.LayerNorm(x.clamp(-BERT_CLAMP, BERT_CLAMP) + residual)
        return x.clamp(-BERT_CLAMP, BERT_CLAMP)


class _Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, eps: float, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, num_heads, attn_dropout)
        self.output = _DenseAddNorm(hidden, hidden, eps, dropout, clamp=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: str) -> None:
        super().__init__()
        if activation not in ACT2FN:
            raise BenchError(f"Unknown BERT hidden_act {activation!r}; expected one of {sorted(ACT2FN)}.")
        self.dense = nn.Linear(hidden, intermediate)
        self.act = ACT2FN[activation]  # "gelu" is the exact erf GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dense(x).clamp(-BERT_CLAMP, BERT_CLAMP))
        return x.clamp(-BERT_CLAMP, BERT_CLAMP)


class BertEncoderLayer(nn.Module):
    """One BERT encoder layer with fresh weights, shaped like the text encoder (``config.bert``).

    ``forward(visual, text)``: ``text.hidden`` ``[B, T, D]`` is updated under ``text.mask`` ``[B, T]``;
    ``visual`` passes through unchanged.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        bert = config.bert
        if bert.get("position_embedding_type", "absolute") != "absolute":
            raise BenchError("GLIP's tower BERT layers use absolute positions; relative position types are not supported.")
        hidden, eps = int(bert["hidden_size"]), float(bert["layer_norm_eps"])
        dropout = float(bert["hidden_dropout_prob"])
        self.attention = _Attention(
            hidden, int(bert["num_attention_heads"]), eps, float(bert["attention_probs_dropout_prob"]), dropout
        )
        self.intermediate = _Intermediate(hidden, int(bert["intermediate_size"]), str(bert["hidden_act"]))
        self.output = _DenseAddNorm(int(bert["intermediate_size"]), hidden, eps, dropout, clamp=True)

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> tuple[list[torch.Tensor], TextFeatures]:
        attended = self.attention(text.hidden, text.mask)
        return list(visual), text.with_hidden(self.output(self.intermediate(attended), attended))
