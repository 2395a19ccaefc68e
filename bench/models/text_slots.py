"""The text-encoder extension points over a ``transformers`` BERT, shared by every backend that uses one.

A backend's text encoder subclasses :class:`BertTextSlots` and says where its ``BertModel`` is
(:attr:`BertTextSlots.bert`); the slots and their checks are then the same for GLIP and Grounding DINO:

* ``input_embedding_hook`` (default ``None``) may rewrite the word embeddings ``[B, T, D]`` and the
  attention mask ``[B, T]`` before BERT runs, e.g. to insert learnable context vectors (CoOp). It
  must keep the number of slots ``T``. A hook that inserts tokens in front of the caption's tokens
  declares how far they move with an integer attribute ``token_shift`` (default 0); the detector
  shifts its positive maps by :meth:`BertTextSlots.token_shift` and refuses captions that no longer fit.
* ``layer_input_hook`` (default ``None``) is called as ``hook(i, hidden)`` with the input ``[B, T, D]``
  of every encoder layer ``i`` (0-based) and returns its replacement of the same shape, e.g. to
  replace context tokens with per-layer deep prompts (MaPLe).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn
from transformers import BertModel

from bench.errors import BenchError
from bench.models.base import AdapterSite

# (input embeddings [B, T, D], attention mask [B, T]) -> (input embeddings, attention mask)
InputEmbeddingHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (layer index, layer input [B, T, D]) -> layer input [B, T, D]
LayerInputHook = Callable[[int, torch.Tensor], torch.Tensor]


class BertTextSlots(nn.Module):
    """The ``input_embedding_hook`` and ``layer_input_hook`` slots of a BERT text encoder.

    Subclasses call :meth:`attach_layer_hooks` once their ``bert`` exists; the per-layer forward
    pre-hooks do nothing while ``layer_input_hook`` is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_embedding_hook: InputEmbeddingHook | None = None
        self.layer_input_hook: LayerInputHook | None = None

    @property
    def bert(self) -> BertModel:
        raise NotImplementedError

    def attach_layer_hooks(self) -> None:
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

    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def token_shift(self) -> int:
        """How many slots the installed ``input_embedding_hook`` moves every caption token to the right."""
        return int(getattr(self.input_embedding_hook, "token_shift", 0))

    def hooked_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The word embeddings of ``input_ids`` and the mask, as the ``input_embedding_hook`` rewrites them."""
        embeddings = self.word_embeddings()(input_ids)
        if self.input_embedding_hook is None:
            return embeddings, attention_mask
        slots = embeddings.shape[:2]
        embeddings, attention_mask = self.input_embedding_hook(embeddings, attention_mask)
        if embeddings.shape[:2] != slots or attention_mask.shape != slots:
            raise BenchError(
                f"The input_embedding_hook changed the text input from {tuple(slots)} slots to embeddings "
                f"{tuple(embeddings.shape[:2])} and mask {tuple(attention_mask.shape)}; it must keep [B, T] "
                "(drop trailing padding slots to make room for inserted tokens)."
            )
        return embeddings, attention_mask


def bert_adapter_sites(bert: BertModel, group: str) -> list[AdapterSite]:
    """The adapter sites of a ``transformers`` BERT: per layer its attention output projection and its
    feed-forward (from ``intermediate``, whose input is the attention's output, to ``output.dense``,
    before the residual and layer norm: where Houlsby et al. 2019 place their adapters)."""
    sites = []
    for layer in bert.encoder.layer:
        dense = layer.attention.output.dense
        sites.append(AdapterSite(group, "attention", dense, dense))
        sites.append(AdapterSite(group, "feed_forward", layer.intermediate, layer.output.dense))
    return sites
