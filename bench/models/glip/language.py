"""GLIP's text side: the BERT encoder (``transformers.BertModel``) and its tokenizer.

The released checkpoints contain the fine-tuned BERT weights, so only the *shape* of
bert-base-uncased is needed to build the model; the tokenizer files, however, must be on disk (a
local folder or the Hugging Face cache): nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel

from bench.errors import BenchError
from bench.models.glip.config import TextConfig

DEFAULT_TOKENIZER = "bert-base-uncased"


@dataclass
class TextEncoding:
    """The text encoder's output, as GLIP's language backbone returns it.

    ``hidden`` ``[B, T, D]`` is the unmasked last layer (what enters the fusion tower), ``embedded``
    is ``hidden`` with padded positions zeroed, ``mask`` ``[B, T]`` is the tokenizer's attention mask.
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor


# (input embeddings [B, T, D], attention mask [B, T]) -> (input embeddings, attention mask)
InputEmbeddingHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (layer index, layer input [B, T, D]) -> layer input [B, T, D]
LayerInputHook = Callable[[int, torch.Tensor], torch.Tensor]


class LanguageBackbone(nn.Module):
    """``language_backbone.body.model``: a ``BertModel`` without pooler, called without token types.

    Extension point: ``input_embedding_hook`` (default ``None``) may rewrite the word embeddings and
    the attention mask before BERT runs, e.g. to insert learnable context vectors (CoOp). It must
    keep the number of slots ``T``. A hook that inserts tokens in front of the caption's tokens
    declares how far they move with an integer attribute ``token_shift`` (default 0); the detector
    shifts its positive maps by :meth:`token_shift` and refuses captions that no longer fit.

    Extension point: ``layer_input_hook`` (default ``None``) is called as ``hook(i, hidden)`` with
    the input ``[B, T, D]`` of every encoder layer ``i`` (0-based) and returns its replacement of the
    same shape, e.g. to replace context tokens with per-layer deep prompts (MaPLe).
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        bert_config = BertConfig(**config.bert)
        bert_config._attn_implementation = "eager"  # GLIP's numerics; sdpa differs in the last bits
        self.body = nn.Module()
        self.body.model = BertModel(bert_config, add_pooling_layer=False)
        self.input_embedding_hook: InputEmbeddingHook | None = None
        self.layer_input_hook: LayerInputHook | None = None
        for index, layer in enumerate(self.bert.encoder.layer):
            layer.register_forward_pre_hook(partial(self._before_layer, index))

    def _before_layer(self, index: int, _layer: nn.Module, args: tuple) -> tuple | None:
        if self.layer_input_hook is None:
            return None
        hidden = self.layer_input_hook(index, args[0])
        if hidden.shape != args[0].shape:
            raise BenchError(f"The layer_input_hook returned {tuple(hidden.shape)} for text layer {index}; expected {tuple(args[0].shape)}.")
        return (hidden, *args[1:])

    def num_layers(self) -> int:
        """Number of encoder layers that ``layer_input_hook`` is called for."""
        return len(self.bert.encoder.layer)

    @property
    def bert(self) -> BertModel:
        return self.body.model

    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def token_shift(self) -> int:
        """How many slots the installed ``input_embedding_hook`` moves every caption token to the right."""
        return int(getattr(self.input_embedding_hook, "token_shift", 0))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoding:
        embeddings = self.word_embeddings()(input_ids)
        if self.input_embedding_hook is not None:
            slots = embeddings.shape[:2]
            embeddings, attention_mask = self.input_embedding_hook(embeddings, attention_mask)
            if embeddings.shape[:2] != slots or attention_mask.shape != slots:
                raise BenchError(
                    f"The input_embedding_hook changed the text input from {tuple(slots)} slots to embeddings "
                    f"{tuple(embeddings.shape[:2])} and mask {tuple(attention_mask.shape)}; it must keep [B, T] "
                    "(drop trailing padding slots to make room for inserted tokens)."
                )
        out = self.bert(inputs_embeds=embeddings, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        return TextEncoding(hidden=hidden, embedded=hidden * attention_mask.unsqueeze(-1).to(hidden.dtype), mask=attention_mask)


def load_tokenizer(name_or_path: str | Path = DEFAULT_TOKENIZER):
    """A fast BERT tokenizer from a local folder or the Hugging Face cache, never from the network."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as err:
        raise BenchError(
            f"The tokenizer {str(name_or_path)!r} is neither a local folder nor in the Hugging Face cache "
            f"({type(err).__name__}). GLIP uses bert-base-uncased: on a machine with network access run "
            "`python -c \"from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained('bert-base-uncased').save_pretrained('bert-base-uncased')\"`, "
            "copy that folder here and pass its path (--text-encoder DIR), or fill the cache that HF_HOME points to."
        ) from None
    if not tokenizer.is_fast:
        raise BenchError(f"The tokenizer in {name_or_path} has no fast (Rust) version; GLIP's positive maps need one.")
    return tokenizer
