"""Grounding DINO's text side: ``bert-base-uncased`` inside ``transformers``' model, with our text slots.

Grounding DINO lets BERT attend only within a phrase: ``transformers`` derives a block-diagonal
self-attention mask and per-phrase position ids from the token ids, splitting at ``[CLS]``,
``[SEP]``, ``.`` and ``?`` (the ids 101, 102, 1012 and 1029 of bert-base-uncased are hard-coded).
Tokens that a text hook inserts after ``[CLS]`` (CoOp's context) are therefore given the id of
``.`` in the ids the model sees: each becomes a one-token phrase, the class phrases keep their
masks and position ids, and the context acts on the detection through the fusion layers, the
feature enhancer and the decoder's text cross-attention, where every real token is visible.
Their embeddings are the hook's, substituted for the word-embedding lookup
(:meth:`GroundingDinoText.substituted_word_embeddings`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import BertModel

from bench.errors import BenchError
from bench.models.text_slots import BertTextSlots

PERIOD_TOKEN_ID = 1012  # "." in bert-base-uncased: a phrase delimiter for Grounding DINO


class GroundingDinoText(BertTextSlots):
    """The text-encoder extension points over ``model.text_backbone`` (referenced, not registered,
    so BERT's parameters keep their ``transformers`` names)."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        object.__setattr__(self, "_bert", bert)
        self.attach_layer_hooks()

    @property
    def bert(self) -> BertModel:
        return self._bert

    @contextmanager
    def substituted_word_embeddings(self, embeddings: torch.Tensor) -> Iterator[None]:
        """Within the block, BERT's word-embedding lookup returns ``embeddings`` ``[B, T, D]`` instead."""

        def substitute(_module, _inputs, looked_up: torch.Tensor) -> torch.Tensor:
            if looked_up.shape != embeddings.shape:
                raise BenchError(f"Text embeddings {tuple(embeddings.shape)} do not match the token ids {tuple(looked_up.shape[:2])}.")
            return embeddings.to(looked_up.dtype)

        handle = self.word_embeddings().register_forward_hook(substitute)
        try:
            yield
        finally:
            handle.remove()


def ids_with_inserted_tokens(input_ids: torch.Tensor, shift: int) -> torch.Tensor:
    """``[CLS]``, ``shift`` phrase delimiters, then the caption's ids (the last ``shift`` slots dropped)."""
    if shift == 0:
        return input_ids
    inserted = input_ids.new_full((input_ids.shape[0], shift), PERIOD_TOKEN_ID)
    return torch.cat([input_ids[:, :1], inserted, input_ids[:, 1 : input_ids.shape[1] - shift]], dim=1)
