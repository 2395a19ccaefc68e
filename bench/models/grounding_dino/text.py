"""Grounding DINO's text side: ``bert-base-uncased`` inside ``transformers``' model, with our text slots.

Grounding DINO lets BERT attend only within a phrase: ``transformers`` derives a block-diagonal
self-attention mask and per-phrase position ids from the token ids, splitting at ``[CLS]``,
``[SEP]``, ``.`` and ``?`` (the ids 101, 102, 1012 and 1029 of bert-base-uncased are hard-coded).
Tokens that a text hook inserts after ``[CLS]`` (CoOp's context, MaPLe's prompts) are given the id
of ``.`` in the ids the model sees, so the class phrases keep their blocks and position ids (each
inserted token is a phrase of its own, at position 0). BERT's mask is then widened so that every
token also attends to the inserted ones, as CoOp and MaPLe intend (shared context that conditions
every class name), while the class phrases still do not see each other
(:meth:`GroundingDinoText.context_visible`). The feature enhancer's text self-attention keeps
``transformers``' phrase mask (the context is isolated there); the fusion layers and the decoder's
text cross-attention see every real token. The inserted tokens' embeddings are the hook's,
substituted for the word-embedding lookup (:meth:`GroundingDinoText.substituted_word_embeddings`).
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
        bert.register_forward_pre_hook(self.context_visible, with_kwargs=True)

    def context_visible(self, _bert: BertModel, args: tuple, kwargs: dict) -> tuple | None:
        """BERT's ``[B, 1, T, T]`` phrase mask (True = may attend) with the columns of the inserted
        tokens opened to every row; nothing changes when nothing is inserted."""
        shift = self.token_shift()
        if shift == 0:
            return None
        args, kwargs = list(args), dict(kwargs)
        positional = len(args) > 1
        mask = (args[1] if positional else kwargs["attention_mask"]).clone()
        mask[..., 1 : 1 + shift] = True
        if positional:
            args[1] = mask
        else:
            kwargs["attention_mask"] = mask
        return tuple(args), kwargs

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
