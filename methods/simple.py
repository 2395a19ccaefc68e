"""Baselines that only choose which of the detector's own parameters train.

Defaults (each config's ``sources`` gives the source of every field): ``full`` follows GLIP's ODinW
fine-tuning recipe (lr 1e-4, weight decay 0.05, text encoder lr 1e-5, ``FREEZE_CONV_BODY_AT 2``;
microsoft/GLIP README and ``configs/pretrain/glip_Swin_T_O365.yaml``); ``linear-probe`` uses the same
optimiser settings on GLIP's linear-probe set, as GLIP's README does; ``bitfit``'s lr 1e-3 is ours, the
project's rate for methods that train a small set of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.models.base import DetectorBase
from bench.options import NON_NEGATIVE, POSITIVE, Range
from bench.tuning.base import Method, MethodConfig, register_method, trainable_by_names

# Swin's stages in every backbone here (GLIP-T, GLIP-L, glip-nano, Grounding DINO's Swin): the
# largest meaningful ``freeze_vision_stages`` is one more (the patch embedding counts as stage 0).
SWIN_STAGES = 4

# The AdamW rate of every method that trains a small set of weights (bitfit here; lora, dora, ia3 in
# methods.peft_tuners): ours, one decade above full fine-tuning's GLIP rate (1e-4), since few weights
# start from a neutral point (zero offsets, ones, the pre-trained biases) and must move further.
WEIGHT_SUBSET_LR_SOURCE = ("ours: ten times full fine-tuning's 1e-4, the rate of every method here that trains a "
                           "small set of weights (bitfit, lora, dora, ia3, adapter, the peft catalogue)")


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    lr: float = 0.0
    weight_decay: float = 0.0

    limits = {"lr": NON_NEGATIVE}  # nothing trains, so no rate is needed

    sources = {
        "lr": "ours: nothing trains, so no optimiser is built",
        "weight_decay": "ours: nothing trains, so no optimiser is built",
    }


@register_method("zero-shot", ZeroShotConfig, "nothing trained: the pre-trained detector evaluated as it is",
                 family="none")
class ZeroShot(Method):
    identity_at_init = True
    trains = False

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

    # -1 freezes nothing; SWIN_STAGES + 1 freezes the patch embedding and every stage.
    limits = {"freeze_vision_stages": Range(-1, SWIN_STAGES + 1), "text_encoder_lr": POSITIVE}

    sources = {
        "freeze_vision_stages": "official code: microsoft/GLIP README, ODinW fine-tuning command "
                                "(MODEL.BACKBONE.FREEZE_CONV_BODY_AT 2)",
        "text_encoder_lr": "official code: microsoft/GLIP configs/pretrain/glip_Swin_T_O365.yaml (SOLVER.LANG_LR 0.00001)",
    }


def frozen_vision_parameters(model: DetectorBase, freeze_at: int) -> set[str]:
    """GLIP's rule: ``k >= 0`` freezes the patch embedding, ``k >= 2`` also stages ``1..k-1``."""
    stages = model.vision_stage_parameters()
    frozen = set(stages[0]) if freeze_at >= 0 else set()
    for stage in stages[1:max(freeze_at, 1)]:
        frozen |= set(stage)
    return frozen


@register_method("full", FullConfig, "full fine-tuning with GLIP's recipe (first vision stage frozen, lower text lr)",
                 family="all weights")
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

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The allocation, an upper bound: the detector's own weights carry its architecture's
        symmetries (per-head query-key gauges, ReLU rescaling, LayerNorm affines absorbed by the next
        Linear, key biases that softmax ignores), which the extension points do not expose."""
        return self.expected_trainable(model)


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    sources = {
        "lr": "official code: microsoft/GLIP README, Linear Probing: the fine-tuning command with "
              "TUNING_HIGHLEVEL_OVERRIDE linear_prob, so BASE_LR 0.0001",
        "weight_decay": "official code: microsoft/GLIP README, Linear Probing: the fine-tuning command "
                        "(SOLVER.WEIGHT_DECAY 0.05)",
    }


@register_method("linear-probe", LinearProbeConfig, "GLIP's linear probe: box regression, centerness, text projection, logit scale and biases",
                 family="head")
class LinearProbe(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return trainable_by_names(model, model.linear_probe_parameters())

    def expected_trainable(self, model: DetectorBase) -> int:
        chosen = set(model.linear_probe_parameters())
        return sum(p.numel() for n, p in model.named_parameters() if n in chosen)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The allocation, an upper bound: redundancies among these weights depend on the head (e.g.
        GLIP's ``log_scale`` duplicates a common scale of the text projection; Grounding DINO's ReLU box
        MLPs can rescale each hidden unit), which the extension points do not expose."""
        return self.expected_trainable(model)


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    lr: float = 1e-3
    weight_decay: float = 0.0

    sources = {
        "lr": WEIGHT_SUBSET_LR_SOURCE,
        "weight_decay": "ours: no effect, GLIP's optimiser rule gives every bias weight decay 0 "
                        "(microsoft/GLIP maskrcnn_benchmark/solver/build.py)",
    }


def bias_parameters(model: DetectorBase) -> list[str]:
    return [n for n in model.base_parameter_names() if n.endswith(".bias")]


@register_method("bitfit", BitFitConfig, "BitFit: every bias term of the detector, nothing else", family="biases")
class BitFit(Method):
    identity_at_init = True

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return trainable_by_names(model, bias_parameters(model))

    def expected_trainable(self, model: DetectorBase) -> int:
        chosen = set(bias_parameters(model))
        return sum(p.numel() for n, p in model.named_parameters() if n in chosen)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The allocation, an upper bound: which biases act depends on the architecture (a key bias
        adds a constant over the keys, which softmax ignores; a value bias passes the softmax average as
        a constant that the output projection's bias already covers), which the extension points do not
        expose."""
        return self.expected_trainable(model)
