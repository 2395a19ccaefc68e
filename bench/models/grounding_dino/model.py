"""Grounding DINO (``transformers``' ``GroundingDinoForObjectDetection``, and MM-Grounding-DINO's
``MMGroundingDinoForObjectDetection``) behind the detector interface.

The ``transformers`` model is kept whole under ``hf`` (its own parameter names below that prefix) and
runs its own forward pass; this wrapper adds what the harness and the methods need:

* prompts in Grounding DINO's convention (``"cat . dog ."``, :data:`GROUNDING_DINO_STYLE`), padded to
  the longest caption of the batch, and chunked vocabularies (one full pass per chunk, merged);
* training losses with ``transformers``' criterion (:mod:`bench.models.grounding_dino.loss`): every
  decoder layer's loss (the last one's plus auxiliary ones, as in the official training recipe,
  whatever the checkpoint's ``auxiliary_loss`` says) and the encoder's loss on its selected
  proposals as the official code computes it (the official recipe's contrastive denoising queries
  are in neither ``transformers`` nor here);
* detections selected as the official COCO evaluation does (:mod:`bench.models.grounding_dino.postprocess`);
* the extension points of :mod:`bench.models.base`: Swin blocks with ``extra_tokens``, the BERT text
  slots (:mod:`bench.models.grounding_dino.text`), ``text_feature_offset`` applied to BERT's output
  right before ``text_projection`` (the text features that enter the feature enhancer and its fusion
  layers), and every fusion layer ``hf.model.encoder.layers[i].fusion_layer.attn``
  (:mod:`bench.models.grounding_dino.extensions`).

Parameter groups: ``vision_backbone`` the Swin; ``text_encoder`` BERT and ``text_projection``;
``fusion`` the encoder's fusion layers; ``neck`` the rest of the feature enhancer (input projections,
level embeddings, deformable image layers, text enhancer layers); ``head`` the decoder, query
embeddings, two-stage proposal layers and box heads. The linear probe trains the decoder's box
regression MLPs and the class heads' biases: Grounding DINO's class logits are a parameter-free dot
product with the text features (MM-Grounding-DINO adds one learned bias per head).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.utils.checkpoint
from torch import nn
from torchvision.ops import box_convert
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GroundingDinoForObjectDetection,
    MMGroundingDinoForObjectDetection,
    PretrainedConfig,
)

from bench.data.prompts import Prompt, PromptStyle
from bench.errors import BenchError
from bench.models import ATTENTION_KERNELS_OF, MODEL_INPUT_CHECKS, MODELS, ModelInputs
from bench.models.base import (ATTENTION_KERNELS, CHECKPOINTING_LEVELS, AdapterSite, DetectorBase, Detections, FusionLayer, InputSpec,
                               VisionBlock, declare_adapter_sites, merge_detections)
from bench.models.grounding_dino.config import GROUNDING_DINO_INPUTS, SWIN_SHAPES, SwinShape, swin_shape_of
from bench.models.grounding_dino.extensions import add_slots
from bench.models.grounding_dino.loss import decoder_loss, proposal_loss
from bench.models.grounding_dino.postprocess import select_detections
from bench.models.grounding_dino.text import GroundingDinoText, ids_with_inserted_tokens
from bench.models.text_slots import bert_adapter_sites

GROUNDING_DINO_STYLE = PromptStyle(separator=" . ", terminator=" .")
# Detections kept per image and prompt chunk (the official COCO evaluation's num_select).
DETECTIONS_PER_IMAGE = 300


class GroundingDino(DetectorBase):
    """``hf``: a ``GroundingDinoForObjectDetection`` or ``MMGroundingDinoForObjectDetection``;
    ``tokenizer``: its fast BERT tokenizer."""

    prompt_style = GROUNDING_DINO_STYLE

    def __init__(
        self, hf: GroundingDinoForObjectDetection | MMGroundingDinoForObjectDetection, tokenizer: Any = None, inputs: InputSpec | None = None
    ) -> None:
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.inputs = inputs or GROUNDING_DINO_INPUTS
        self.text_slots = hf.config.max_text_len
        # transformers' SwinBackbone normalises each output stage with its own norm and never calls
        # this final LayerNorm; the checkpoints do not hold it. Dropped, so counts cover acting weights.
        hf.model.backbone.conv_encoder.model.swin.layernorm = nn.Identity()
        hf.loss_function = decoder_loss
        add_slots(hf)
        self.language = GroundingDinoText(hf.model.text_backbone)
        self.text_feature_offset: nn.Module | None = None
        # On BERT's output (not on text_projection's input), so that a peft wrapper around
        # text_projection still receives the offset features.
        hf.model.text_backbone.register_forward_hook(self._offset_text_features)
        self._adapter_sites = self._find_adapter_sites()
        declare_adapter_sites(self._adapter_sites)

    def _offset_text_features(self, _bert: nn.Module, _inputs: tuple, output):
        if self.text_feature_offset is None:
            return None
        if isinstance(output, tuple):
            return (self.text_feature_offset(output[0]), *output[1:])
        output.last_hidden_state = self.text_feature_offset(output.last_hidden_state)
        return output

    # ----------------------------------------------------------------- extension points
    @property
    def input_spec(self) -> InputSpec:
        return self.inputs

    @property
    def swin(self) -> nn.Module:
        return self.hf.model.backbone.conv_encoder.model.swin

    def parameter_groups(self) -> dict[str, list[str]]:
        fusion = tuple(f"hf.model.encoder.layers.{i}.fusion_layer." for i in range(len(self.hf.model.encoder.layers)))
        groups: dict[str, list[str]] = {"vision_backbone": [], "neck": [], "text_encoder": [], "fusion": [], "head": []}
        for name in self.base_parameter_names():
            if name.startswith("hf.model.backbone."):
                groups["vision_backbone"].append(name)
            elif name.startswith(("hf.model.text_backbone.", "hf.model.text_projection.")):
                groups["text_encoder"].append(name)
            elif name.startswith(fusion):
                groups["fusion"].append(name)
            elif name.startswith(("hf.model.input_proj_vision.", "hf.model.level_embed", "hf.model.encoder.")):
                groups["neck"].append(name)
            else:
                groups["head"].append(name)
        return groups

    def vision_blocks(self) -> list[VisionBlock]:
        blocks = []
        for stage, layer in enumerate(self.swin.encoder.layers):
            for block in layer.blocks:
                blocks.append(VisionBlock(index=len(blocks), stage=stage, channels=block.channels, module=block))
        return blocks

    def vision_stage_parameters(self) -> list[list[str]]:
        """``[patch embedding, stage 1 (blocks + its patch merging), stage 2, ...]``; the output norms
        of the stages (``hidden_states_norms``) are in no stage, as GLIP's ``FREEZE_CONV_BODY_AT``
        leaves its Swin's output norms trainable."""
        prefix = "hf.model.backbone.conv_encoder.model.swin."
        names = [n for n in self.base_parameter_names() if n.startswith(prefix)]
        stages = [[n for n in names if n.startswith(f"{prefix}embeddings.")]]
        for i in range(len(self.swin.encoder.layers)):
            stages.append([n for n in names if n.startswith(f"{prefix}encoder.layers.{i}.")])
        return stages

    def linear_probe_parameters(self) -> list[str]:
        """The decoder's box-regression MLPs and, where the class heads have one (MM-Grounding-DINO),
        their logit biases."""
        heads = ("hf.model.decoder.bbox_embed.", "hf.model.decoder.class_embed.")
        return [n for n in self.base_parameter_names() if n.startswith(heads)]

    def adapter_sites(self) -> list[AdapterSite]:
        return list(self._adapter_sites)

    def _find_adapter_sites(self) -> list[AdapterSite]:
        """Per Swin block its attention output projection and MLP, per BERT layer the same, and the two
        output projections of every fusion layer. The deformable encoder and the decoder (``neck`` and
        ``head`` groups) have none yet."""
        sites = []
        for block in self.vision_blocks():
            out = block.module.attention.o_proj
            sites.append(AdapterSite("vision_backbone", "attention", out, out))
            sites.append(AdapterSite("vision_backbone", "feed_forward", block.module.mlp, block.module.mlp.fc2))
        sites += bert_adapter_sites(self.hf.model.text_backbone, "text_encoder")
        for layer in self.fusion_layers():
            sites += [AdapterSite("fusion", "attention", out, out) for out in (layer.out_vision_proj, layer.out_text_proj)]
        return sites

    def fusion_layers(self) -> list[FusionLayer]:
        """``encoder.layers[i].fusion_layer.attn`` with their ``token_extension`` slots."""
        return [layer.fusion_layer.attn for layer in self.hf.model.encoder.layers]

    def text_encoder(self) -> GroundingDinoText:
        return self.language

    def set_attention_kernel(self, kind: str) -> None:
        """Only ``sdpa``, what transformers builds: its BERT text encoder already uses fused attention,
        and Grounding DINO's deformable and fusion attention have no fused form. ``eager`` is refused:
        transformers' eager BERT attention treats Grounding DINO's 4-D sub-sentence text mask
        differently (detection scores of the tiny test model moved by up to 1e-3, far beyond float
        rounding), so it is not the same function."""
        if kind not in ATTENTION_KERNELS:
            raise ValueError(f"the attention kernel must be one of {ATTENTION_KERNELS}, got {kind!r}")
        if kind != "sdpa":
            raise BenchError(
                "Grounding DINO computes attention only as transformers builds it (sdpa in its text encoder); "
                f"attention={kind!r} would change how its sub-sentence text mask applies. Leave the protocol's "
                "attention at default (or set sdpa)."
            )

    def set_activation_checkpointing(self, level: str) -> None:
        """``all``: the layers transformers recomputes through its ``GradientCheckpointingLayer`` (the
        Swin stages of the image backbone and BERT's layers; the Grounding DINO decoder's own older
        checkpointing path is left off); transformers applies it to modules in train mode only.
        ``official`` recomputes nothing: the official Grounding DINO release has no training code to
        follow."""
        if level not in CHECKPOINTING_LEVELS:
            raise ValueError(f"activation checkpointing must be one of {CHECKPOINTING_LEVELS}, got {level!r}")
        for module in self.hf.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = level == "all"
                module._gradient_checkpointing_func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)

    # ----------------------------------------------------------------- forward
    def predict(self, images: torch.Tensor, image_sizes: torch.Tensor, prompts: Sequence[Prompt],
                labels: list[dict[str, torch.Tensor]] | None = None):
        """``transformers``' outputs (``logits`` ``[B, Q, text_slots]``, ``pred_boxes``, the encoder's
        proposal scores and boxes, and the decoder ``loss`` when ``labels`` are given) for one prompt
        per image, with the text slots applied; ``text_mask`` ``[B, T]`` is added (the real tokens)."""
        if self.tokenizer is None:
            raise RuntimeError("Grounding DINO needs a tokenizer to encode prompts; build it with a tokenizer.")
        self.check_fit(prompts)
        self._check_size(images)
        device = images.device
        shift = self.language.token_shift()
        tokens = self.tokenizer([p.caption for p in prompts], padding="longest", return_tensors="pt")
        input_ids = nn.functional.pad(tokens["input_ids"], (0, shift), value=self.tokenizer.pad_token_id).to(device)
        mask = nn.functional.pad(tokens["attention_mask"], (0, shift)).to(device)
        pixel_mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long, device=device)
        for i, (height, width) in enumerate(image_sizes.tolist()):
            pixel_mask[i, :height, :width] = 1
        run = partial(self.hf, pixel_values=images, pixel_mask=pixel_mask, labels=labels)
        if self.language.input_embedding_hook is None:
            outputs = run(input_ids=input_ids, attention_mask=mask)
        else:
            embeddings, mask = self.language.hooked_embeddings(input_ids, mask)
            with self.language.substituted_word_embeddings(embeddings):
                outputs = run(input_ids=ids_with_inserted_tokens(input_ids, shift), attention_mask=mask)
        outputs["text_mask"] = mask
        return outputs

    def encoder_positions(self, height: int, width: int) -> int:
        """Image positions the encoder sees for a padded ``height x width`` batch: every feature level,
        Swin's output stages (stride ``patch * 2^(stage - 1)``) then the extra stride-2 levels."""
        config = self.hf.config
        patch = config.backbone_config.patch_size
        strides = [patch * 2 ** (index - 1) for index in config.backbone_config.out_indices]
        while len(strides) < config.num_feature_levels:
            strides.append(strides[-1] * 2)
        return sum(math.ceil(height / s) * math.ceil(width / s) for s in strides[: config.num_feature_levels])

    def _check_size(self, images: torch.Tensor) -> None:
        """The two-stage encoder picks ``num_queries`` proposals among its positions: smaller images cannot work."""
        positions, wanted = self.encoder_positions(*images.shape[-2:]), self.hf.config.num_queries
        if positions < wanted:
            raise BenchError(
                f"Images of {images.shape[-2]}x{images.shape[-1]} pixels give the encoder {positions} positions, fewer than "
                f"the {wanted} proposals (num_queries) it selects; feed larger images (the model's input_spec resizes "
                f"to a {self.input_spec.min_size_test}-pixel short side)."
            )

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        prompts: Prompt | Sequence[Prompt],
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[Detections]:
        """Losses (training) or detections in resized-image pixels (eval); arguments as ``GLIP.forward``."""
        prompts = self.per_image(prompts, images.shape[0])
        if not self.training:
            return self._detections(self.predict(images, image_sizes, prompts), image_sizes, prompts)
        if targets is None:
            raise ValueError("Grounding DINO in training mode needs targets (boxes and labels per image).")
        self.check_fit(prompts)
        shifted = self.shift_prompts(prompts)
        labels = []
        for target, prompt, (height, width) in zip(targets, shifted, image_sizes.tolist()):
            boxes = target["boxes"].as_subclass(torch.Tensor).to(images.device).float()
            scale = boxes.new_tensor([width, height, width, height])
            labels.append({
                "boxes": box_convert(boxes, "xyxy", "cxcywh") / scale,
                "positive_map": prompt.token_map(target["labels"], self.text_slots).to(images.device),
            })
        outputs = self.predict(images, image_sizes, prompts, labels)
        proposals = proposal_loss(outputs.enc_outputs_class, outputs.enc_outputs_coord_logits, labels, self.hf.config, outputs["text_mask"])
        return {"loss_decoder": outputs.loss, "loss_proposals": proposals}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, image_sizes: torch.Tensor, prompts: Sequence[Prompt]) -> list[Detections]:
        """Detections over several prompt chunks (long vocabularies), one full pass per chunk, merged per image."""
        chunks = []
        for prompt in prompts:
            chunk = [prompt] * images.shape[0]
            chunks.append(self._detections(self.predict(images, image_sizes, chunk), image_sizes, chunk))
        return merge_detections(chunks)

    def _detections(self, outputs, image_sizes: torch.Tensor, prompts: Sequence[Prompt]) -> list[Detections]:
        return select_detections(outputs.logits, outputs.pred_boxes, image_sizes, self.shift_prompts(prompts), DETECTIONS_PER_IMAGE)


# ----------------------------------------------------------------------------- building
FAMILY_MODELS = {"grounding-dino": GroundingDinoForObjectDetection, "mm-grounding-dino": MMGroundingDinoForObjectDetection}
# A checkpoint on the Hugging Face Hub for each registered model, named in the how-to-download error.
HUB_NAMES = {
    "grounding-dino-t": "IDEA-Research/grounding-dino-tiny",
    "grounding-dino-b": "IDEA-Research/grounding-dino-base",
    "mm-grounding-dino-t": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    "mm-grounding-dino-b": "openmmlab-community/mm_grounding_dino_base_o365v1_goldg_v3det",
    "mm-grounding-dino-l": "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg",
}


def grounding_dino_on_config(config: PretrainedConfig, tokenizer: Any = None, inputs: InputSpec | None = None) -> GroundingDino:
    """A randomly initialised (MM-)Grounding DINO of ``config`` (tests; the ``meta`` device for accounting)."""
    return GroundingDino(FAMILY_MODELS[config.model_type](config), tokenizer, inputs)


def _missing_weights(name: str, reason: str) -> BenchError:
    hub = HUB_NAMES[name]
    return BenchError(
        f"{name} needs its weights as a local folder (--weights DIR): {reason}. On a machine with network access run "
        f"`huggingface-cli download {hub} --local-dir {name}` (the model and its tokenizer), copy the folder here "
        f"and pass --weights {name}."
    )


def _held_model(family: str, shape: SwinShape) -> str:
    """The registered name of what a checkpoint holds, for errors."""
    sizes = [size for size, known in SWIN_SHAPES.items() if known == shape and f"{family}-{size}" in HUB_NAMES]
    return f"{family}-{sizes[0]}" if sizes else f"no released {family} size"


def load_grounding_dino(family: str, size: str, *, weights: str | Path | None = None) -> GroundingDino:
    """The ``family`` model of ``size`` from a ``from_pretrained`` folder, offline.

    The folder must hold the model (``config.json`` and weights) and its tokenizer; a folder of the
    other family or of another size is refused, naming the model it does hold.
    """
    name, source = f"{family}-{size}", _checked_config(family, size, weights)[0]
    try:
        model, info = FAMILY_MODELS[family].from_pretrained(source, local_files_only=True, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, use_fast=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise _missing_weights(name, f"loading from {source!r} failed ({' '.join(str(err).split())[:300]})") from None
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if problems:  # transformers would only warn and leave those tensors randomly initialised
        listed = "; ".join(f"{len(keys)} {kind.replace('_', ' ')}, e.g. {sorted(map(str, keys))[0]}" for kind, keys in problems.items())
        raise BenchError(f"The weights in {source} do not match {name}: {listed}. Pass the {name} folder (--weights DIR) "
                         "exactly as save_pretrained or the Hugging Face download wrote it.")
    return GroundingDino(model.eval(), tokenizer)


def check_grounding_dino_inputs(family: str, size: str, inputs: ModelInputs) -> None:
    """Load the folder once, strictly (config family and size, every tensor, the tokenizer): the
    per-cell load then cannot fail on it. transformers renames tensors between its files and its
    modules, so a header-only comparison would need its private key mapping; one load is seconds."""
    name = f"{family}-{size}"
    if inputs.tokenizer is not None:
        raise BenchError(f"{name} reads its tokenizer from its --weights folder; leave out --tokenizer {inputs.tokenizer}.")
    load_grounding_dino(family, size, weights=inputs.weights)


def _checked_config(family: str, size: str, weights: str | Path | None) -> tuple[str, Any]:
    """``(folder, config)`` of a ``from_pretrained`` folder that holds ``family`` at ``size``."""
    name = f"{family}-{size}"
    if weights is None:
        raise _missing_weights(name, "no --weights was given")
    source = str(weights)
    if Path(source).is_file():
        raise _missing_weights(name, f"{source} is a file, not a from_pretrained folder")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise _missing_weights(name, f"{source!r} has no readable config.json ({type(err).__name__})") from None
    if config.model_type not in FAMILY_MODELS:
        raise BenchError(f"{source} holds a {config.model_type!r} model, not one of {', '.join(FAMILY_MODELS)}; pass a {name} folder.")
    held = _held_model(config.model_type, swin_shape_of(config))
    if held != name:
        raise BenchError(
            f"{source} holds {held} (Swin embed_dim {config.backbone_config.embed_dim}, depths "
            f"{list(config.backbone_config.depths)}), not {name}; pass the {name} folder"
            + (f" or --model {held}." if held in HUB_NAMES else ".")
        )
    return source, config


DESCRIPTIONS = {
    "grounding-dino-t": "Grounding DINO-T (transformers): Swin-T, BERT-base, 6 encoder + 6 decoder layers (172.2M parameters)",
    "grounding-dino-b": "Grounding DINO-B (transformers): Swin-B, BERT-base, 6 encoder + 6 decoder layers (232.3M parameters)",
    "mm-grounding-dino-t": "MM-Grounding-DINO-T (transformers): Grounding DINO's network with learned class-head biases, Swin-T",
    "mm-grounding-dino-b": "MM-Grounding-DINO-B (transformers): Grounding DINO's network with learned class-head biases, Swin-B",
    "mm-grounding-dino-l": "MM-Grounding-DINO-L (transformers): Grounding DINO's network with learned class-head biases, Swin-L",
}
for _name, _description in DESCRIPTIONS.items():
    _family, _size = _name.rsplit("-", 1)
    MODELS.add(_name, partial(load_grounding_dino, _family, _size), f"{_description}; --weights DIR")
    MODEL_INPUT_CHECKS.add(_name, partial(check_grounding_dino_inputs, _family, _size))
    ATTENTION_KERNELS_OF[_name] = ("sdpa",)
