"""The seam between detectors and tuning methods.

A detector exposes its parts as named extension points; methods use only these, never a model's
internals or its name, so every method runs on every backend:

* ``parameter_groups()``: stable group names (``vision_backbone``, ``neck``, ``text_encoder``,
  ``fusion``, ``head``) -> parameter names, for freezing, LoRA target selection and accounting;
* ``vision_stage_parameters()``: the image backbone's parameters by depth (stem first), for recipes
  that freeze the first stages; ``linear_probe_parameters()``: the final prediction layers;
* ``vision_blocks()``: the transformer blocks of the image backbone, each with an ``extra_tokens``
  slot where visual prompts join the block's attention;
* ``text_encoder()``: exposes ``word_embeddings()`` and an ``input_embedding_hook`` slot for context
  vectors in the text input space (``[B, T, D]`` embeddings and ``[B, T]`` mask in and out, ``T``
  kept); a hook that inserts tokens before the caption's declares ``token_shift: int`` and the
  detector moves its positive maps by that much (``Prompt.shifted``), refusing captions that no
  longer fit in ``text_slots``; and a ``layer_input_hook`` slot called as ``hook(i, hidden)`` on
  the input ``[B, T, D]`` of every text layer ``i < num_layers()`` (deep text prompts);
* ``text_feature_offset``: a slot for a module that edits the text features before fusion;
* ``fusion_layers()``: every image-text fusion layer, each exposing its projections and a
  ``token_extension`` slot whose tokens are appended before attention and stripped after it.

Slots are plain attributes that default to ``None``; with every slot empty a model computes exactly
what its official implementation computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.data.transforms import PixelNormalization

PARAMETER_GROUPS = ("vision_backbone", "neck", "text_encoder", "fusion", "head")

# Attribute names of extension slots; tensors below them belong to methods, not to the base model.
SLOT_NAMES = ("extra_tokens", "input_embedding_hook", "layer_input_hook", "text_feature_offset", "token_extension")


@dataclass(frozen=True)
class VisionBlock:
    """One transformer block of the image backbone, with what a prompt for it must look like."""

    index: int
    stage: int
    channels: int
    module: nn.Module


@dataclass
class Detections:
    """Detections of one image in the model's resized-image coordinates, with contiguous labels."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class InputSpec:
    """The images a detector expects: its pixel convention and its training and test sizes.

    Sizes follow the short-side/long-side rule of :func:`bench.data.transforms.glip_resize_hw`;
    ``min_sizes_train`` is the multi-scale set one size is drawn from per training image.
    """

    pixels: PixelNormalization
    min_sizes_train: tuple[int, ...]
    max_size_train: int
    min_size_test: int
    max_size_test: int
    size_divisibility: int


# The adapter name under which methods inject `peft` tuners (LoRA, DoRA, IA3) into a detector's layers.
PEFT_ADAPTER_NAME = "peft_method"


def is_slot_tensor(name: str) -> bool:
    """Whether a state-dict key was added by a method: under an extension slot, or a peft adapter."""
    parts = name.split(".")
    return any(part in SLOT_NAMES for part in parts) or PEFT_ADAPTER_NAME in parts


class DetectorBase(nn.Module):
    """What every detector backend provides (see the module docstring)."""

    tokenizer: Any
    text_slots: int  # token positions of the text input (GLIP: 256); prompts and offsets are sized by it

    @property
    def input_spec(self) -> InputSpec:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def vision_blocks(self) -> list[VisionBlock]:
        raise NotImplementedError

    def vision_stage_parameters(self) -> list[list[str]]:
        raise NotImplementedError

    def linear_probe_parameters(self) -> list[str]:
        raise NotImplementedError

    def fusion_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def text_encoder(self) -> nn.Module:
        raise NotImplementedError

    def base_parameter_names(self) -> list[str]:
        """Parameters of the detector itself, excluding anything installed in a slot."""
        return [name for name, _ in self.named_parameters() if not is_slot_tensor(name)]
