"""GLIP's text side: the BERT encoder (``transformers.BertModel``) and its tokenizer.

The released checkpoints contain the fine-tuned BERT weights, so only the *shape* of
bert-base-uncased is needed to build the model; the tokenizer files, however, must be on disk (a
local folder or the Hugging Face cache): nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel

from bench.errors import BenchError
from bench.models.glip.config import TextConfig
from bench.models.text_slots import BertTextSlots

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


class LanguageBackbone(BertTextSlots):
    """``language_backbone.body.model``: a ``BertModel`` without pooler, called without token types,
    with the text extension slots of :class:`bench.models.text_slots.BertTextSlots`."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        bert_config = BertConfig(**config.bert)
        # GLIP's numerics; "sdpa" (GLIP.set_attention_kernel) differs in the last bits
        bert_config._attn_implementation = "eager"
        self.body = nn.Module()
        self.body.model = BertModel(bert_config, add_pooling_layer=False)
        self.attach_layer_hooks()

    @property
    def bert(self) -> BertModel:
        return self.body.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoding:
        embeddings, attention_mask = self.hooked_embeddings(input_ids, attention_mask)
        out = self.bert(inputs_embeds=embeddings, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        return TextEncoding(hidden=hidden, embedded=hidden * attention_mask.unsqueeze(-1).to(hidden.dtype), mask=attention_mask)


def load_tokenizer(name_or_path: str | Path = DEFAULT_TOKENIZER):
    """A fast BERT tokenizer from a local folder or the Hugging Face cache, never from the network."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as err:
        where = ("is a folder without a readable tokenizer (tokenizer_config.json, vocab.txt)" if Path(name_or_path).is_dir()
                 else "is neither a local folder nor in the Hugging Face cache")
        raise BenchError(
            f"The tokenizer {str(name_or_path)!r} {where} "
            f"({type(err).__name__}). GLIP uses bert-base-uncased: on a machine with network access run "
            "`python -c \"from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained('bert-base-uncased').save_pretrained('bert-base-uncased')\"`, "
            "copy that folder here and pass its path (--tokenizer DIR), or fill the cache that HF_HOME points to."
        ) from None
    if not tokenizer.is_fast:
        raise BenchError(f"The tokenizer in {name_or_path} has no fast (Rust) version; GLIP's positive maps need one.")
    return tokenizer
