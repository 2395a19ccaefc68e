"""GLIP assembled: Swin + FPN, BERT, the VL-DyHead, anchors, ATSS loss and post-processing.

``GLIP.forward(images, image_sizes, prompts, targets=None)`` returns the three losses in training
mode and per-image detections in eval mode, as the official ``GeneralizedVLRCNN`` does. Long
vocabularies are detected with :meth:`GLIP.detect`, one text pass per prompt chunk over image
features computed once (the official code reruns the backbone per chunk; the image backbone does not
see the text, so the result is the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from bench.data.prompts import Prompt, tokenize_captions
from bench.models import MODEL_INPUT_CHECKS, MODELS, PACKAGED_WEIGHTS, ModelInputs
from bench.models.base import (ATTENTION_KERNELS, CHECKPOINTING_LEVELS, AdapterSite, DetectorBase, Detections, InputSpec, VisionBlock,
                               declare_adapter_sites, merge_detections)
from bench.models.glip.anchors import grid_anchors
from bench.models.glip.atss_assignment import ImageTargets
from bench.models.glip.atss_loss import atss_losses
from bench.models.glip.backbone import GlipBackbone
from bench.models.glip.checkpoint import load_official_checkpoint, read_official_state_dict, verify_state_dict_shapes
from bench.models.glip.config import GLIP_L, GLIP_NANO, GLIP_T, GlipConfig
from bench.models.glip.fusion import VLFuse
from bench.models.glip.head import HeadOutputs, VLDyHead
from bench.models.glip.language import DEFAULT_TOKENIZER, LanguageBackbone, load_tokenizer
from bench.models.glip.postprocess import postprocess
from bench.models.glip.text_features import TextFeatures
from bench.models.glip.tower import build_dyhead_tower
from bench.models.text_slots import bert_adapter_sites

NANO_TOKENIZER = Path(__file__).resolve().parent / "nano"
# glip-nano pre-trained on the shapes corpus by `python -m bench.pretrain` (see nano/MODEL_CARD.md).
NANO_WEIGHTS = NANO_TOKENIZER / "glip-nano.safetensors"


@dataclass
class TextBatch:
    """Tokenised prompts of a batch and the text encoder's features for them."""

    input_ids: torch.Tensor
    features: TextFeatures


class GLIP(DetectorBase):
    """GLIP with the official module names (``backbone``, ``language_backbone``, ``rpn.head``).

    Extension points (see :mod:`bench.models.base`): ``vision_blocks()`` (Swin blocks with an
    ``extra_tokens`` slot), ``text_encoder()`` (``input_embedding_hook`` slot), ``text_feature_offset``
    (a module ``[B, T, D] -> [B, T, D]`` applied to the text features before the tower, where GLIP's
    own prompt tuning adds its offsets), and ``fusion_layers()`` (``token_extension`` slots).
    """

    def __init__(self, config: GlipConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.backbone = GlipBackbone.from_config(config)
        self.language_backbone = LanguageBackbone(config.text)
        self.rpn = nn.Module()
        self.rpn.head = VLDyHead(config.dyhead, config.text.hidden_size, build_dyhead_tower(config))
        self.rpn.head.dyhead_tower.set_gradient_checkpointing(config.dyhead.use_checkpoint)
        self.text_feature_offset: nn.Module | None = None
        self.text_slots = config.text.max_query_len
        # True: every caption padded to all text slots, as the released GLIP configurations do
        # (MODEL.LANGUAGE_BACKBONE.PAD_MAX); False: to the batch's text length, the same outputs for
        # a fraction of the text work (DetectorBase.text_length).
        self.pad_text_to_slots = False
        self._adapter_sites = self._find_adapter_sites()
        declare_adapter_sites(self._adapter_sites)

    # ----------------------------------------------------------------- extension points
    @property
    def input_spec(self) -> InputSpec:
        sizes = self.config.input
        return InputSpec(
            pixels=sizes.pixels,
            min_sizes_train=sizes.min_sizes_train,
            max_size_train=sizes.max_size_train,
            min_size_test=sizes.min_size_test,
            max_size_test=sizes.max_size_test,
            size_divisibility=sizes.size_divisibility,
        )

    def parameter_groups(self) -> dict[str, list[str]]:
        fusion_prefixes = tuple(
            f"rpn.head.dyhead_tower.{i}." for i, module in enumerate(self.rpn.head.dyhead_tower) if isinstance(module, VLFuse)
        )
        groups: dict[str, list[str]] = {"vision_backbone": [], "neck": [], "text_encoder": [], "fusion": [], "head": []}
        for name in self.base_parameter_names():
            if name.startswith("backbone.body."):
                groups["vision_backbone"].append(name)
            elif name.startswith("backbone.fpn."):
                groups["neck"].append(name)
            elif name.startswith("language_backbone."):
                groups["text_encoder"].append(name)
            elif name.startswith(fusion_prefixes):
                groups["fusion"].append(name)
            else:
                groups["head"].append(name)
        return groups

    def vision_blocks(self) -> list[VisionBlock]:
        return self.backbone.vision_blocks()

    def vision_stage_parameters(self) -> list[list[str]]:
        """``[patch embedding, stage 1 (blocks + its patch merging), stage 2, ...]``, as GLIP's
        ``FREEZE_CONV_BODY_AT`` counts them (microsoft/GLIP maskrcnn_benchmark/modeling/backbone/swint.py,
        ``SwinTransformer._freeze_stages``)."""
        names = [n for n in self.base_parameter_names() if n.startswith("backbone.body.")]
        stages = [[n for n in names if n.startswith("backbone.body.patch_embed.")]]
        for i in range(len(self.config.swin.depths)):
            stages.append([n for n in names if n.startswith(f"backbone.body.layers.{i}.")])
        return stages

    def linear_probe_parameters(self) -> list[str]:
        """GLIP's linear-probe set: box regression, centerness, the text projection of the token head,
        its logit scale and biases (``linear_prob`` tuning mode: microsoft/GLIP tools/finetune.py,
        ``tuning_highlevel_override``, and ``GeneralizedVLRCNN.train`` in
        maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py)."""
        head = ("bbox_pred.", "centerness.", "dot_product_projection_text.", "log_scale", "bias_lang", "bias0")
        return [n for n in self.base_parameter_names() if n.startswith("rpn.head.") and n[len("rpn.head."):].startswith(head)]

    def fusion_layers(self) -> list[nn.Module]:
        return self.rpn.head.dyhead_tower.fusion_layers()

    def adapter_sites(self) -> list[AdapterSite]:
        return list(self._adapter_sites)

    def _find_adapter_sites(self) -> list[AdapterSite]:
        """Per Swin block its attention projection and MLP, per BERT layer the same, and the two output
        projections of every fusion layer (image and text side). The DyHead's convolutions and its
        language layers (the ``head`` group) have none."""
        sites = []
        for block in self.backbone.vision_blocks():
            sites.append(AdapterSite("vision_backbone", "attention", block.module.attn.proj, block.module.attn.proj))
            sites.append(AdapterSite("vision_backbone", "feed_forward", block.module.mlp, block.module.mlp.fc2))
        sites += bert_adapter_sites(self.language_backbone.bert, "text_encoder")
        for layer in self.fusion_layers():
            sites += [AdapterSite("fusion", "attention", out, out) for out in (layer.out_v_proj, layer.out_l_proj)]
        return sites

    def text_encoder(self) -> LanguageBackbone:
        return self.language_backbone

    def set_activation_checkpointing(self, level: str) -> None:
        """``official``: the fusion blocks, as GLIP's released configurations do
        (``MODEL.DYHEAD.USE_CHECKPOINT: True``); ``all``: every module of the DyHead tower and every
        Swin block, one at a time."""
        if level not in CHECKPOINTING_LEVELS:
            raise ValueError(f"activation checkpointing must be one of {CHECKPOINTING_LEVELS}, got {level!r}")
        tower = self.rpn.head.dyhead_tower
        tower.set_gradient_checkpointing(level == "official")
        tower.checkpoint_modules = level == "all"
        self.backbone.body.set_checkpointing(level == "all")

    def set_attention_kernel(self, kind: str) -> None:
        """``sdpa``: fused kernels in the fusion layers, the tower's BERT layers and the BERT encoder
        (transformers' ``sdpa`` attention), each where it computes what the official code does."""
        if kind not in ATTENTION_KERNELS:
            raise ValueError(f"the attention kernel must be one of {ATTENTION_KERNELS}, got {kind!r}")
        self.language_backbone.bert.config._attn_implementation = kind
        for module in self.rpn.head.dyhead_tower.modules():
            if hasattr(module, "attention_kernel"):
                module.attention_kernel = kind

    def frozen_parts(self) -> dict[str, nn.Module]:
        return {"image": self.backbone, "text": self.language_backbone}

    # ----------------------------------------------------------------- stages
    def encode_text(self, prompts: Sequence[Prompt]) -> TextBatch:
        """Tokenise one caption per image and run BERT and the offset slot.

        Captions are padded to the batch's text length ``T`` (:meth:`DetectorBase.text_length`), or to
        all text slots with ``pad_text_to_slots``. The features' mask is the one the text encoder's
        ``input_embedding_hook`` returns (inserted context tokens count as text); token positions of
        the prompts move by :meth:`LanguageBackbone.token_shift`, see :meth:`DetectorBase.shift_prompts`.
        """
        if self.tokenizer is None:
            raise RuntimeError("GLIP needs a tokenizer to encode prompts; build it with build_glip(..., tokenizer=...).")
        self.check_fit(prompts)
        length = self.text_slots if self.pad_text_to_slots else self.text_length(prompts)
        tokens = tokenize_captions([p.caption for p in prompts], self.tokenizer, length)
        device = next(self.parameters()).device
        input_ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        hidden, mask = self.frozen_output("text", self._encode_tokens, input_ids, mask)
        if self.text_feature_offset is not None:
            hidden = self.text_feature_offset(hidden)
        return TextBatch(input_ids, TextFeatures(hidden=hidden, mask=mask))

    def _encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoding = self.language_backbone(input_ids, mask)
        return encoding.hidden, encoding.mask

    def predict(self, features: list[torch.Tensor], text: TextFeatures) -> tuple[HeadOutputs, TextFeatures]:
        """Run the fusion tower and the prediction layers on image features and text features."""
        visual, fused_text = self.rpn.head.dyhead_tower(features, text)
        return self.rpn.head.predict(visual, fused_text.hidden), fused_text

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        prompts: Prompt | Sequence[Prompt],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[Detections]:
        """Losses (training) or detections in resized-image pixels (eval).

        ``images`` ``[B, 3, Hp, Wp]``: a padded, normalised batch (``pad_batch``); ``image_sizes``
        ``[B, 2]`` the un-padded ``(h, w)``; ``prompts``: one for all images or one per image;
        ``targets`` (training): per image ``boxes`` ``[N, 4]`` xyxy in resized pixels and ``labels``
        ``[N]`` (the prompt's labels).
        """
        prompts = self.per_image(prompts, images.shape[0])
        features = self.frozen_output("image", self.backbone, images)
        text = self.encode_text(prompts)
        prompts = self.shift_prompts(prompts)
        outputs, _ = self.predict(features, text.features)
        anchors = grid_anchors(outputs.feature_sizes, self.config.anchors, device=images.device)
        if self.training:
            if targets is None:
                raise ValueError("GLIP in training mode needs targets (boxes and labels per image).")
            image_targets = [
                ImageTargets(
                    boxes=t["boxes"].as_subclass(torch.Tensor).to(images.device).float(),
                    labels=t["labels"].to(images.device),
                    positive_map=p.token_map(t["labels"], text.features.mask.shape[1]).to(images.device),
                    text_slots=self.text_slots,
                )
                for t, p in zip(targets, prompts)
            ]
            losses, _ = atss_losses(outputs, anchors, image_targets, text.features.mask, self.config.loss)
            return losses
        return self._postprocess(outputs, anchors, image_sizes, prompts)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, image_sizes: torch.Tensor, prompts: Sequence[Prompt]) -> list[Detections]:
        """Detections over several prompt chunks (long vocabularies), merged per image
        (:func:`bench.models.base.merge_detections`)."""
        features = self.frozen_output("image", self.backbone, images)
        chunks = []
        for prompt in prompts:
            chunk = [prompt] * images.shape[0]
            outputs, _ = self.predict(features, self.encode_text(chunk).features)
            chunk = self.shift_prompts(chunk)
            anchors = grid_anchors(outputs.feature_sizes, self.config.anchors, device=images.device)
            chunks.append(self._postprocess(outputs, anchors, image_sizes, chunk))
        return merge_detections(chunks)

    def _postprocess(
        self, outputs: HeadOutputs, anchors: list[torch.Tensor], image_sizes: torch.Tensor, prompts: Sequence[Prompt]
    ) -> list[Detections]:
        if all(p is prompts[0] for p in prompts):
            return postprocess(outputs, anchors, image_sizes, prompts[0].label_to_tokens, self.config.inference)
        return [
            postprocess(outputs.select(i), anchors, image_sizes[i : i + 1], p.label_to_tokens, self.config.inference)[0]
            for i, p in enumerate(prompts)
        ]


def build_glip(
    config: GlipConfig,
    *,
    weights: str | Path | None = None,
    tokenizer: str | Path = DEFAULT_TOKENIZER,
    allow_unsafe_checkpoint: bool = False,
) -> GLIP:
    """A GLIP of ``config`` with its tokenizer, loaded strictly from an official checkpoint if given.

    Without ``weights`` the model keeps its random initialisation (tests, benchmarks).
    """
    model = GLIP(config, load_tokenizer(tokenizer))
    if weights is not None:
        load_official_checkpoint(model, weights, allow_unsafe_pickle=allow_unsafe_checkpoint)
    return model


def check_glip_inputs(config: GlipConfig, default_tokenizer: str | Path, inputs: ModelInputs) -> None:
    """Load the tokenizer, then match the checkpoint's tensor names and shapes against this
    configuration built on the meta device (no weights in memory; the file is memory-mapped)."""
    load_tokenizer(inputs.tokenizer or default_tokenizer)
    if inputs.weights is None:
        return
    with torch.device("meta"):
        model = GLIP(config)
    state = read_official_state_dict(inputs.weights, allow_unsafe_pickle=inputs.allow_unsafe_checkpoint, mmap=True)
    verify_state_dict_shapes(model.state_dict(), state, source=str(inputs.weights))


for _name, _config, _tokenizer, _description in (
    ("glip-t", GLIP_T, DEFAULT_TOKENIZER, "GLIP-T: Swin-T, BERT-base, 6 VL-DyHead blocks (231.8M parameters)"),
    ("glip-l", GLIP_L, DEFAULT_TOKENIZER, "GLIP-L: Swin-L, BERT-base, 8 VL-DyHead blocks (430.4M parameters)"),
    ("glip-nano", GLIP_NANO, NANO_TOKENIZER, "GLIP-nano: the same GLIP reduced for the synthetic shapes world, "
     "pre-trained on its corpus (2.0M parameters, CPU-sized)"),
):
    MODELS.add(_name, partial(build_glip, _config, tokenizer=_tokenizer), _description)
    MODEL_INPUT_CHECKS.add(_name, partial(check_glip_inputs, _config, _tokenizer))
PACKAGED_WEIGHTS["glip-nano"] = NANO_WEIGHTS
