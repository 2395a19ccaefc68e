"""Baselines that only choose which of the detector's own parameters train.

Defaults: ``full`` follows GLIP's ODinW fine-tuning recipe (lr 1e-4, weight decay 0.05, text encoder
lr 1e-5, ``FREEZE_CONV_BODY_AT 2``; reference/glip.md §5.3); ``linear-probe`` uses the same optimiser
settings on GLIP's linear-probe set; ``bitfit``'s lr is ours (BitFit papers use larger rates than full
fine-tuning, 1e-3 here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.models.base import DetectorBase
from bench.tuning.base import Method, MethodConfig, register_method, trainable_by_names


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    lr: float = 0.0
    weight_decay: float = 0.0


@register_method("zero-shot", ZeroShotConfig, "nothing trained: the pre-trained detector evaluated as it is")
class ZeroShot(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return {}

    def expected_trainable(self, model: DetectorBase) -> int:
        return 0


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """``freeze_vision_stages``: GLIP's ``FREEZE_CONV_BODY_AT`` (2 = patch embedding + first stage
    frozen; -1 = nothing frozen); ``text_encoder_lr``: GLIP's ``LANG_LR``, the lr of the text
    encoder's weights (None: the same lr as the rest)."""

    freeze_vision_stages: int = 2
    text_encoder_lr: float | None = 1e-5


def frozen_vision_parameters(model: DetectorBase, freeze_at: int) -> set[str]:
    """GLIP's rule: ``k >= 0`` freezes the patch embedding, ``k >= 2`` also stages ``1..k-1``."""
    stages = model.vision_stage_parameters()
    frozen = set(stages[0]) if freeze_at >= 0 else set()
    for stage in stages[1:max(freeze_at, 1)]:
        frozen |= set(stage)
    return frozen


@register_method("full", FullConfig, "full fine-tuning with GLIP's recipe (first vision stage frozen, lower text lr)")
class Full(Method):
    identity_at_init = True

    def _names(self, model: DetectorBase) -> list[str]:
        frozen = frozen_vision_parameters(model, self.config.freeze_vision_stages)
        return [n for n in model.base_parameter_names() if n not in frozen]

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return trainable_by_names(model, self._names(model))

    def expected_trainable(self, model: DetectorBase) -> int:
        trained = set(self._names(model))
        return sum(p.numel() for n, p in model.named_parameters() if n in trained)


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    pass


@register_method("linear-probe", LinearProbeConfig, "GLIP's linear probe: box regression, centerness, text projection, logit scale and biases")
class LinearProbe(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return trainable_by_names(model, model.linear_probe_parameters())

    def expected_trainable(self, model: DetectorBase) -> int:
        chosen = set(model.linear_probe_parameters())
        return sum(p.numel() for n, p in model.named_parameters() if n in chosen)


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    lr: float = 1e-3
    weight_decay: float = 0.0


def bias_parameters(model: DetectorBase) -> list[str]:
    return [n for n in model.base_parameter_names() if n.endswith(".bias")]


@register_method("bitfit", BitFitConfig, "BitFit: every bias term of the detector, nothing else")
class BitFit(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return trainable_by_names(model, bias_parameters(model))

    def expected_trainable(self, model: DetectorBase) -> int:
        chosen = set(bias_parameters(model))
        return sum(p.numel() for n, p in model.named_parameters() if n in chosen)
