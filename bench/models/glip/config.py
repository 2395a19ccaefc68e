"""GLIP's architecture as plain dataclasses: the official GLIP-T and GLIP-L, and any reduced size.

Every dimension is a parameter (nothing is hard-coded to 768 or 2048), so a fixture's
``reduced_config.json`` describes a model as fully as the official yaml files do.
Values come from microsoft/GLIP ``maskrcnn_benchmark/config/defaults.py`` and the GLIP-T/L configs
(``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``, ``configs/pretrain/glip_Swin_L.yaml``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.data.transforms import PixelNormalization

# bert-base-uncased, the text encoder of every released GLIP (shape only; weights come from the checkpoint).
BERT_BASE_UNCASED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


@dataclass(frozen=True)
class SwinConfig:
    """Swin v1 in the Swin-Transformer-Object-Detection layout (patch merging inside each stage)."""

    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.2

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class FpnConfig:
    """FPN on the last three Swin stages, P3-P7 with P6 from P5; DropBlock only in training."""

    out_channels: int = 256
    drop_block_prob: float = 0.3
    drop_block_size: int = 3


@dataclass(frozen=True)
class TextConfig:
    """The BERT text encoder (``bert`` holds ``transformers.BertConfig`` fields) and prompt length."""

    bert: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED))
    max_query_len: int = 256

    @property
    def hidden_size(self) -> int:
        return int(self.bert["hidden_size"])


@dataclass(frozen=True)
class FusionConfig:
    """Bidirectional image-text cross-attention (``BiMultiHeadAttention``) inside every tower block."""

    embed_dim: int = 2048
    num_heads: int = 8
    dropout: float = 0.1
    clamp: float = 50000.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class DyHeadConfig:
    """The VL-DyHead tower (fusion, BERT layer, DyConv per block) and the dot-product token head."""

    num_convs: int = 6
    channels: int = 256
    gn_groups: int = 16
    deformable: bool = True  # GLIP's MODEL.DYHEAD.USE_DFCONV
    prior_prob: float = 0.01
    log_scale_init: float = 0.0
    use_checkpoint: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    """ATSS anchors: one square anchor per location and level."""

    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class InferenceConfig:
    """Post-processing (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/inference.py, ``ATSSPostProcessor``)."""

    pre_nms_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_image: int = 100


@dataclass(frozen=True)
class LossConfig:
    """ATSS assignment and the three training losses (microsoft/GLIP maskrcnn_benchmark/modeling/rpn/loss.py,
    ``ATSSLossComputation``)."""

    atss_topk: int = 9
    reg_loss_weight: float = 2.0
    token_alpha: float = 0.25
    token_gamma: float = 2.0
    token_loss_weight: float = 1.0


@dataclass(frozen=True)
class InputConfig:
    """Image sizes and GLIP's pixel convention (BGR, 0..255)."""

    min_size_test: int = 800
    max_size_test: int = 1333
    min_sizes_train: tuple[int, ...] = (480, 560, 640, 720, 800)
    max_size_train: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)

    @property
    def pixels(self) -> PixelNormalization:
        return PixelNormalization(self.pixel_mean, self.pixel_std, channel_order="BGR", value_scale=255.0)


@dataclass(frozen=True)
class GlipConfig:
    """A complete GLIP architecture."""

    name: str = "glip-t"
    swin: SwinConfig = field(default_factory=SwinConfig)
    fpn: FpnConfig = field(default_factory=FpnConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    dyhead: DyHeadConfig = field(default_factory=DyHeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GLIP_T = GlipConfig(name="glip-t")
GLIP_L = GlipConfig(
    name="glip-l",
    swin=SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, drop_path_rate=0.4),
    dyhead=DyHeadConfig(num_convs=8),
)


def from_reduced_config(path: str | Path, bert_config: str | Path | None = None) -> GlipConfig:
    """The architecture a parity fixture describes (its ``reduced_config.json``).

    ``bert_config`` (a BertConfig JSON) overrides the ``bert`` block of the file; fixtures ship one in
    ``bert_local/config.json`` for both the text encoder and the tower's BERT layers.
    """
    raw = json.loads(Path(path).read_text())
    bert = json.loads(Path(bert_config).read_text()) if bert_config else raw["bert"]
    swin, fusion, dyhead, inference, loss, inp = (
        raw["swin"], raw["fusion"], raw["dyhead"], raw["inference"], raw["loss"], raw["input"],
    )
    return GlipConfig(
        name=f"glip-fixture-{raw.get('fixture', 'custom')}",
        swin=SwinConfig(
            patch_size=swin["patch_size"],
            embed_dim=swin["embed_dim"],
            depths=tuple(swin["depths"]),
            num_heads=tuple(swin["num_heads"]),
            window_size=swin["window_size"],
            mlp_ratio=float(swin["mlp_ratio"]),
            qkv_bias=swin["qkv_bias"],
            drop_path_rate=swin["drop_path_rate"],
        ),
        fpn=replace(FpnConfig(), out_channels=raw["fpn"]["out_channels"], drop_block_prob=_drop_prob(raw["fpn"])),
        text=TextConfig(bert={k: v for k, v in bert.items() if k != "architectures"}, max_query_len=raw["language"]["max_query_len"]),
        fusion=FusionConfig(embed_dim=fusion["embed_dim"], num_heads=fusion["num_heads"], dropout=fusion["dropout"], clamp=float(fusion["clamp"])),
        dyhead=DyHeadConfig(num_convs=dyhead["num_convs"], channels=dyhead["channels"], gn_groups=dyhead["gn_groups"], prior_prob=dyhead["prior_prob"]),
        anchors=AnchorConfig(sizes=tuple(raw["anchors"]["sizes"]), strides=tuple(raw["anchors"]["strides"])),
        inference=InferenceConfig(
            pre_nms_thresh=inference["pre_nms_thresh"],
            pre_nms_top_n=inference["pre_nms_top_n"],
            nms_thresh=inference["nms_th"],
            detections_per_image=inference["detections_per_img"],
        ),
        loss=LossConfig(
            atss_topk=loss["atss_topk"],
            reg_loss_weight=loss["reg_loss_weight"],
            token_alpha=loss["token_alpha"],
            token_gamma=loss["token_gamma"],
            token_loss_weight=loss["dot_product_token_loss_weight"],
        ),
        input=InputConfig(
            min_size_test=inp["min_size_test"],
            max_size_test=inp["max_size_test"],
            size_divisibility=inp["size_divisibility"],
            pixel_mean=tuple(inp["pixel_mean"]),
            pixel_std=tuple(inp["pixel_std"]),
        ),
    )


def _drop_prob(fpn: dict[str, Any]) -> float:
    """Fixture files spell DropBlock as e.g. ``"prob 0.0"``."""
    value = fpn.get("drop_block", 0.0)
    return float(str(value).split()[-1]) if isinstance(value, str) else float(value)


# A small GLIP for the synthetic shapes world (CPU-sized; same code as GLIP-T/L, every dimension reduced):
# Swin with 24 channels, a 2-layer BERT of width 64 over a 121-token vocabulary, two VL-DyHead blocks,
# anchors scaled to objects of 8-60 pixels, images of 96-224 pixels, and plain (not deformable) DyHead
# convolutions, whose backward dominates a CPU step otherwise.
GLIP_NANO = GlipConfig(
    name="glip-nano",
    swin=SwinConfig(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 6), window_size=7, drop_path_rate=0.1),
    fpn=FpnConfig(out_channels=64, drop_block_prob=0.0),
    text=TextConfig(
        bert=dict(BERT_BASE_UNCASED, vocab_size=121, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=64),
        max_query_len=64,
    ),
    fusion=FusionConfig(embed_dim=128, num_heads=4, dropout=0.1),
    dyhead=DyHeadConfig(num_convs=2, channels=64, gn_groups=16, deformable=False),
    anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)),
    input=InputConfig(min_size_test=128, max_size_test=224, min_sizes_train=(96, 112, 128, 144), max_size_train=224),
)
