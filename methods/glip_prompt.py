"""GLIP's own prompt tuning (``language_prompt_v2``: microsoft/GLIP tools/finetune.py,
``tuning_highlevel_override``; ``tunable_linear`` in ``VLDyHeadModule``, maskrcnn_benchmark/modeling/rpn/vldyhead.py).

A zero-initialised matrix whose row ``t`` is added to the text feature of token slot ``t`` before the
fusion tower; everything else stays frozen. With a fixed caption each slot belongs to one class, so
the rows act as per-class text offsets. The official module is ``nn.Linear(768, 1000, bias=False)``
of which only the first ``MAX_QUERY_LEN`` (256) rows are ever used: ``rows`` keeps that allocation
for faithful accounting. Effective count: ``positions x min(width, l_dim)``. Only the rows of the text
positions the captions use act (``text_positions``; every slot when not given): rows past the text
slots are never added, nor are those past a batch's text length (both detectors pad a batch's text to
its longest caption; where GLIP pads to every slot, ``pad_text_to_slots``, the padded slots' features
are masked out of fusion and of the token logits). A row reaches the detector
only through the text features its fusion layers read, ``l_dim`` wide (GLIP: BERT's 768; Grounding
DINO projects BERT's 768 to 256 first), so each row has at most ``min(width, l_dim)`` degrees of
freedom. (GLIP's first fusion block also LayerNorms the text before anything else reads it, which
costs each row two more directions; the extension points do not show this, so GLIP's count is two
per row above the rank.)

Defaults are the official recipe's (``GlipPromptConfig.sources``): AdamW, lr 0.05, weight decay 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.options import AT_LEAST_ONE
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under


@dataclass(frozen=True)
class GlipPromptConfig(MethodConfig):
    lr: float = 0.05
    weight_decay: float = 0.25
    rows: int = 1000

    limits = {"rows": AT_LEAST_ONE}  # at least the model's text slots, checked when installing

    sources = {
        "lr": "official code: microsoft/GLIP README, Prompt Tuning (SOLVER.BASE_LR 0.05, AdamW)",
        "weight_decay": "official code: microsoft/GLIP README, Prompt Tuning (SOLVER.WEIGHT_DECAY 0.25)",
        "rows": "official code: microsoft/GLIP maskrcnn_benchmark/modeling/rpn/vldyhead.py "
                "(tunable_linear = nn.Linear(768, 1000, bias=False))",
    }


class TextSlotOffset(nn.Module):
    """Adds ``weight[:T]`` to text features ``[B, T, D]`` (zero at initialisation); ``T`` is the
    batch's text length, any number up to the text slots."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.weight[: hidden.shape[1]].to(hidden.dtype)


def _text_shape(model: DetectorBase) -> tuple[int, int]:
    """(text slots, feature width) of the detector's text features."""
    return model.text_slots, model.text_encoder().word_embeddings().embedding_dim


@register_method("glip-prompt", GlipPromptConfig, "GLIP's prompt tuning: a zero-initialised offset per text slot before fusion",
                 family="text prompts")
class GlipPrompt(Method):
    slots = ("text_feature_offset",)
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        slots, width = _text_shape(model)
        if self.config.rows < slots:
            raise BenchError(f"glip-prompt needs rows >= the model's {slots} text slots, got rows={self.config.rows}.")
        model.text_feature_offset = TextSlotOffset(self.config.rows, width)
        return trainable_under(model, model.text_feature_offset)

    def expected_trainable(self, model: DetectorBase) -> int:
        return self.config.rows * _text_shape(model)[1]

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The rows of the used text positions, each at most as wide as the fusion layers' text input
        (module docstring)."""
        slots, width = _text_shape(model)
        positions = slots if text_positions is None else min(text_positions, slots)
        fusion_text_width = model.fusion_layers()[0].attention_projections()[1].in_features
        return positions * min(width, fusion_text_width)
