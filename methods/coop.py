"""CoOp: learnable context vectors in the text input-embedding space (Zhou et al., IJCV 2022).

``context_tokens`` (M) vectors of the word-embedding width D are inserted right after ``[CLS]`` of
every caption, shared by all classes ("unified context"): ``[CLS] v_1 .. v_M red square . blue
circle [SEP] [PAD]..``. The text encoder keeps its ``T`` slots, so the last M (padding) slots drop
off and the attention mask gains M ones; the module declares ``token_shift = M``, from which the
detector moves its positive maps M slots to the right and refuses captions that no longer fit
(:mod:`bench.models.base`). Everything else, the word-embedding matrix included, stays frozen.

Defaults (``CoOpConfig.sources``): M = 16 and the normal(0, 0.02) initialisation are CoOp's (its best
few-shot setting). CoOp trains with SGD (lr 2e-3, weight decay 5e-4); SGD rates do not carry over to
AdamW, so lr 1e-2 and weight decay 0.01 are ours: the AdamW setting shared by every prompt method here
(see ``PROMPT_LR_SOURCE``).
Not implemented: CoOp's class-specific context (M vectors per class before each class name), which
would need per-class insertion points and a non-uniform shift of the positive maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.tuning.accounting import LAYER_NORM_INVARIANCES
from bench.options import AT_LEAST_ONE
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under

# The AdamW setting of every method that trains prompt or token vectors (coop, maple, vpt, sdpt), so
# that a comparison at the defaults differs in method rather than in rate. Their papers' rates are
# SGD rates (CoOp 2e-3, MaPLe 3.5e-3, VPT 0.05..50 per task), which do not transfer to AdamW; at
# AdamW 1e-3 the prompts of sdpt and vpt barely moved on the default benchmark. 1e-2 is the centre
# of the decades --tune searches (1e-3..1e-1), which hold both that rate and GLIP's own AdamW
# prompt-tuning rate (0.05, microsoft/GLIP README).
PROMPT_LR_SOURCE = ("ours: the AdamW rate of every prompt method (coop, maple, vpt, sdpt); --tune's 1e-3..1e-1 "
                    "holds GLIP's AdamW prompt rate 0.05")
PROMPT_WEIGHT_DECAY_SOURCE = ("ours: the decoupled AdamW decay of every prompt method, SDPT's released 0.01 "
                              "(configs/pretrain/glip_Swin_L.yaml)")


@dataclass(frozen=True)
class CoOpConfig(MethodConfig):
    """``context_tokens``: M, the number of learnable context vectors (CoOp: 16)."""

    lr: float = 1e-2
    weight_decay: float = 0.01
    context_tokens: int = 16

    limits = {"context_tokens": AT_LEAST_ONE}  # the text slots left for a caption are checked when installing

    sources = {
        "lr": PROMPT_LR_SOURCE + "; CoOp's SGD rate 2e-3 (KaiyangZhou/CoOp configs/trainers/CoOp/rn50.yaml) "
                                 "does not transfer",
        "weight_decay": PROMPT_WEIGHT_DECAY_SOURCE + "; CoOp's 5e-4 is an SGD L2 penalty",
        "context_tokens": "official code: KaiyangZhou/CoOp COOP.md, few-shot commands (M=16)",
    }


class TextContext(nn.Module):
    """``input_embedding_hook``: inserts ``context`` ``[M, D]`` after the first slot (``[CLS]``).

    ``(embeddings [B, T, D], mask [B, T]) -> (embeddings [B, T, D], mask [B, T])``; the caption's
    tokens move ``token_shift = M`` slots to the right and the last M slots are dropped: padding,
    since the detector refuses captions that do not fit and makes a batch's text ``T`` at least its
    longest caption plus M (:meth:`bench.models.base.DetectorBase.text_length`).
    """

    def __init__(self, tokens: int, width: int, std: float = 0.02) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.randn(tokens, width) * std)
        self.token_shift = tokens

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, slots, _ = embeddings.shape
        m = self.token_shift
        if m >= slots:
            raise BenchError(f"{m} context tokens do not fit in {slots} text slots next to [CLS] and [SEP].")
        context = self.context.to(embeddings.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeddings = torch.cat([embeddings[:, :1], context, embeddings[:, 1 : slots - m]], dim=1)
        mask = torch.cat([mask[:, :1], mask.new_ones(batch, m), mask[:, 1 : slots - m]], dim=1)
        return embeddings, mask


def text_width(model: DetectorBase) -> int:
    """D: the width of the detector's text input embeddings."""
    return model.text_encoder().word_embeddings().embedding_dim


def install_text_context(model: DetectorBase, tokens: int) -> dict[str, nn.Parameter]:
    """Put a :class:`TextContext` of ``tokens`` vectors into the text encoder's input-embedding slot."""
    if tokens < 1:
        raise BenchError(f"context_tokens must be at least 1, got {tokens}.")
    if tokens + 2 > model.text_slots:
        raise BenchError(f"context_tokens={tokens} leaves no room for a caption in {model.text_slots} text slots.")
    encoder = model.text_encoder()
    if encoder.input_embedding_hook is not None:
        raise BenchError("The text encoder's input_embedding_hook is already taken; only one text-context method can be installed.")
    encoder.input_embedding_hook = TextContext(tokens, text_width(model))
    return trainable_under(model, encoder.input_embedding_hook)


@register_method("coop", CoOpConfig, "CoOp: M learnable context vectors after [CLS] in the text input space, positive maps shifted",
                 family="text prompts")
class CoOp(Method):
    slots = ("input_embedding_hook",)
    identity_at_init = False

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return install_text_context(model, self.config.context_tokens)

    def expected_trainable(self, model: DetectorBase) -> int:
        return self.config.context_tokens * text_width(model)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """``M * (D - 2)``: each context vector reaches BERT only through its embedding LayerNorm (after
        the position and type embeddings are added), which ignores two directions of it."""
        return self.config.context_tokens * (text_width(model) - LAYER_NORM_INVARIANCES)
