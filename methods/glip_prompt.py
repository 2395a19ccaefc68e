"""GLIP's own prompt tuning (``language_prompt_v2``, reference/glip.md §5.4).

A zero-initialised matrix whose row ``t`` is added to the text feature of token slot ``t`` before the
fusion tower; everything else stays frozen. With a fixed caption each slot belongs to one class, so
the rows act as per-class text offsets. The official module is ``nn.Linear(768, 1000, bias=False)``
of which only the first ``MAX_QUERY_LEN`` (256) rows are ever used: ``rows`` keeps that allocation
for faithful accounting, while the effective count is ``slots x width``. Defaults are the official
recipe's: lr 0.05, weight decay 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under


@dataclass(frozen=True)
class GlipPromptConfig(MethodConfig):
    lr: float = 0.05
    weight_decay: float = 0.25
    rows: int = 1000


class TextSlotOffset(nn.Module):
    """Adds ``weight[:T]`` to text features ``[B, T, D]`` (zero at initialisation)."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.weight[: hidden.shape[1]].to(hidden.dtype)


def _text_shape(model: DetectorBase) -> tuple[int, int]:
    """(text slots, feature width) of the detector's text features."""
    return model.text_slots, model.text_encoder().word_embeddings().embedding_dim


@register_method("glip-prompt", GlipPromptConfig, "GLIP's prompt tuning: a zero-initialised offset per text slot before fusion")
class GlipPrompt(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        slots, width = _text_shape(model)
        if self.config.rows < slots:
            raise BenchError(f"glip-prompt needs rows >= the model's {slots} text slots, got rows={self.config.rows}.")
        model.text_feature_offset = TextSlotOffset(self.config.rows, width)
        return trainable_under(model, model.text_feature_offset)

    def expected_trainable(self, model: DetectorBase) -> int:
        return self.config.rows * _text_shape(model)[1]

    def effective_trainable(self, model: DetectorBase) -> int:
        slots, width = _text_shape(model)
        return slots * width
