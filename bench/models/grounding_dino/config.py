"""Shapes of the released Grounding DINO and MM-Grounding-DINO models, as ``transformers`` config objects.

Built from config objects only (no backbone name, which would make ``transformers`` fetch a config
from the hub), so full-size models can be instantiated on the ``meta`` device for parameter
accounting and a checkpoint folder can be checked against the model it is loaded as. Every released
model has a Swin backbone with outputs of stages 2-4, ``bert-base-uncased``, six encoder and six
decoder layers, 900 queries and 256 text slots; the sizes differ in the Swin (T: the
``IDEA-Research/grounding-dino-tiny`` and ``openmmlab-community/mm_grounding_dino_tiny_*``
checkpoints, B: ``-base``, L: MM-Grounding-DINO's ``-large``). MM-Grounding-DINO is the same network
with a learned bias in its contrastive class heads (``transformers``' own classes; whether its decoder
heads are shared across layers is a field of each checkpoint's config).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import BertConfig, GroundingDinoConfig, MMGroundingDinoConfig, SwinConfig

from bench.data.transforms import PixelNormalization
from bench.models.base import InputSpec


@dataclass(frozen=True)
class SwinShape:
    """What distinguishes the Swin backbones of the released models (the weights' shapes)."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int


SWIN_SHAPES = {
    "t": SwinShape(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "b": SwinShape(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "l": SwinShape(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}
# The transformers config class of each family.
FAMILY_CONFIGS = {"grounding-dino": GroundingDinoConfig, "mm-grounding-dino": MMGroundingDinoConfig}

# Grounding DINO's pre-processing: RGB in 0..1, ImageNet statistics; training scales of the official
# recipe (480..800 step 32, long side at most 1333) and 800/1333 at test time.
GROUNDING_DINO_INPUTS = InputSpec(
    pixels=PixelNormalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    min_sizes_train=tuple(range(480, 801, 32)),
    max_size_train=1333,
    min_size_test=800,
    max_size_test=1333,
    size_divisibility=32,
)


def swin_config(shape: SwinShape) -> SwinConfig:
    return SwinConfig(
        embed_dim=shape.embed_dim,
        depths=list(shape.depths),
        num_heads=list(shape.num_heads),
        window_size=shape.window_size,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )


def grounding_dino_config(size: str, family: str = "grounding-dino") -> GroundingDinoConfig | MMGroundingDinoConfig:
    """The architecture of the released model of ``family`` and ``size`` ("t", "b", "l")."""
    return FAMILY_CONFIGS[family](backbone_config=swin_config(SWIN_SHAPES[size]), text_config=BertConfig())


def swin_shape_of(config: GroundingDinoConfig) -> SwinShape:
    """The Swin shape a (loaded) config describes, for comparing a checkpoint with a model name."""
    backbone = config.backbone_config
    return SwinShape(
        embed_dim=backbone.embed_dim,
        depths=tuple(backbone.depths),
        num_heads=tuple(backbone.num_heads),
        window_size=backbone.window_size,
    )
