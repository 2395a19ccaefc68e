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
  the input ``[B, T, D]`` of every text layer ``i < num_layers()`` (deep text prompts). ``T`` is a
  batch's text length, at most ``text_slots`` (:meth:`DetectorBase.text_length`): whatever a method
  keeps per text position must take any ``T`` up to ``text_slots``;
* ``text_feature_offset``: a slot for a module that edits the text features before fusion;
* ``fusion_layers()``: every image-text fusion layer (:class:`FusionLayer`): its
  ``attention_projections()`` (the image-query and text-key projections whose outputs form the
  shared image-text logits) and a ``token_extension`` slot whose tokens are appended before
  attention and stripped after it (:func:`extend_tokens`);
* ``adapter_sites()``: the attention and feed-forward sublayers of the transformer blocks
  (:class:`AdapterSite`), each with an ``output_adapter`` slot that rewrites the sublayer's output
  from it and the sublayer's input (bottleneck adapters, serial or parallel);
* ``prompt_style``: how the detector joins class names into a caption (:class:`PromptStyle`);
* ``set_activation_checkpointing(level)``: which activations are recomputed in the backward pass
  instead of kept (:data:`CHECKPOINTING_LEVELS`: ``off``; ``official``, what the backend's official
  training code recomputes; ``all``, everything the backend can recompute). No number changes,
  only memory against time;
* ``set_attention_kernel(kind)``: :data:`ATTENTION_KERNELS`: ``eager``, the official computation;
  ``sdpa``, ``torch.nn.functional.scaled_dot_product_attention`` (and transformers' ``sdpa``
  attention) wherever it computes the same function, i.e. no dropout acts and no official clamp can
  bind; the numbers then differ only by float rounding;
* ``frozen_parts()``: the parts whose output is a function of their inputs alone while they are
  frozen, in eval mode and without filled slots (GLIP: ``image``, the backbone with its FPN;
  ``text``, the BERT encoder). A model computes each through :meth:`DetectorBase.frozen_output`, so
  the harness can remember their outputs in a ``frozen_work`` cache (:mod:`bench.train.frozen_cache`)
  without knowing anything else of the model; a model that declares none is simply never cached.

Slots are plain attributes that default to ``None``; with every slot empty a model computes exactly
what its official implementation computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from bench.data.prompts import GLIP_STYLE, Prompt, PromptStyle
from bench.data.transforms import PixelNormalization
from bench.errors import BenchError

PARAMETER_GROUPS = ("vision_backbone", "neck", "text_encoder", "fusion", "head")

# A batch's text length is rounded up to a multiple of this many slots (DetectorBase.text_length).
TEXT_LENGTH_MULTIPLE = 8

# Activation checkpointing (DetectorBase.set_activation_checkpointing), the protocol's
# ``activation_checkpointing`` field.
CHECKPOINTING_LEVELS = ("off", "official", "all")
# Attention kernels (DetectorBase.set_attention_kernel), the protocol's ``attention`` field.
ATTENTION_KERNELS = ("eager", "sdpa")

# Attribute names of extension slots; tensors below them belong to methods, not to the base model.
SLOT_NAMES = ("extra_tokens", "input_embedding_hook", "layer_input_hook", "text_feature_offset", "token_extension",
              "output_adapter")
ADAPTER_KINDS = ("attention", "feed_forward")


@dataclass(frozen=True)
class VisionBlock:
    """One transformer block of the image backbone, with what a prompt for it must look like."""

    index: int
    stage: int
    channels: int
    module: nn.Module


@dataclass(frozen=True)
class AdapterSite:
    """A sublayer of a transformer block where a bottleneck adapter can act (``adapter_sites()``).

    ``kind`` is ``attention`` (the attention's output projection) or ``feed_forward`` (the MLP).
    ``entry`` is the sublayer's first module, whose input is the sublayer's input (``input_width``
    wide), and ``exit`` the Linear that ends it, whose output (``output_width`` wide, before any
    residual or normalisation) is what the site's ``output_adapter`` slot rewrites. The slot lives on
    ``exit``; the model calls it as ``adapter(output, sublayer_input)`` and uses what it returns (see
    :func:`declare_adapter_sites`). ``group`` is the parameter group of the sublayer.
    """

    group: str
    kind: str
    entry: nn.Module
    exit: nn.Linear

    @property
    def input_width(self) -> int:
        first = self.entry if isinstance(self.entry, nn.Linear) else next(
            m for m in self.entry.modules() if isinstance(m, nn.Linear))
        return first.in_features

    @property
    def output_width(self) -> int:
        return self.exit.out_features


def declare_adapter_sites(sites: Sequence[AdapterSite]) -> None:
    """Give each site an empty ``output_adapter`` slot and the hooks that call it; a model calls this
    once, when it is built. An empty slot costs one attribute read per call of ``exit``."""
    for site in sites:
        site.exit.output_adapter = None
        site.exit.register_forward_hook(_call_output_adapter)
        if site.entry is not site.exit:
            site.entry.register_forward_pre_hook(partial(_keep_sublayer_input, site.exit))


def _keep_sublayer_input(exit_layer: nn.Module, entry: nn.Module, args: tuple) -> None:
    """Hand the sublayer's input to its exit while an adapter fills the slot (and only then)."""
    if exit_layer.output_adapter is not None:
        exit_layer._adapter_sublayer_input = args[0]


def _call_output_adapter(exit_layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    adapter = exit_layer.output_adapter
    if adapter is None:
        return None
    sublayer_input = exit_layer.__dict__.pop("_adapter_sublayer_input", args[0])
    return adapter(output, sublayer_input)


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


class TokenExtension(Protocol):
    """What the ``token_extension`` slot of a fusion layer holds.

    ``extend(v_hat [B, N_v, v_dim], l_hat [B, T, l_dim], text_mask [B, T])`` receives the layer's
    normalised inputs right before attention (``text_mask``: 1 for real tokens) and returns them with
    rows appended: ``(v_ext [B, N_v + K_v, v_dim], l_ext [B, T + K_l, l_dim], mask_ext [B, T + K_l])``.
    The layer attends over the extended sequences and drops the appended rows from its outputs.
    """

    def extend(
        self, v_hat: torch.Tensor, l_hat: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class FusionLayer(Protocol):
    """One image-text fusion layer as methods see it, whatever the backend names its projections."""

    token_extension: TokenExtension | None

    def attention_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """``(image-query projection, text-key projection)``: the frozen pair whose outputs form the
        shared image-text logits (GLIP: ``v_proj``, ``l_proj``; Grounding DINO: ``vision_proj``,
        ``text_proj``)."""
        ...


def extend_tokens(
    extension: TokenExtension, v: torch.Tensor, l: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Call ``extension.extend`` and check that it only appended rows (same batch and widths)."""
    v_ext, l_ext, mask_ext = extension.extend(v, l, text_mask)
    ok = (
        v_ext.shape[0] == l_ext.shape[0] == mask_ext.shape[0] == v.shape[0]
        and v_ext.shape[1] >= v.shape[1]
        and l_ext.shape[1] >= l.shape[1]
        and mask_ext.shape[1] == l_ext.shape[1]
        and v_ext.shape[2:] == v.shape[2:]
        and l_ext.shape[2:] == l.shape[2:]
    )
    if not ok:
        raise BenchError(
            f"The token extension {type(extension).__name__} must append rows to the image tokens "
            f"{tuple(v.shape)} and text tokens {tuple(l.shape)} (mask {tuple(text_mask.shape)}), keeping batch "
            f"and feature sizes; it returned {tuple(v_ext.shape)}, {tuple(l_ext.shape)} and mask {tuple(mask_ext.shape)}."
        )
    return v_ext, l_ext, mask_ext


def checked_block_prompts(prompts: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """What a vision block's ``extra_tokens`` slot returned for its input ``x`` ``[B, L, C]``, checked
    to be ``[B, P, width]``."""
    if prompts.dim() != 3 or prompts.shape[0] != x.shape[0] or prompts.shape[2] != width:
        raise BenchError(
            f"The extra_tokens slot of a vision block of width {width} returned prompts of shape "
            f"{tuple(prompts.shape)}; expected [batch={x.shape[0]}, P, {width}]. Expand the prompts to the "
            "batch size of the block's input and give them the block's channel width (see VisionBlock.channels)."
        )
    return prompts


def merge_detections(chunks: list[list[Detections]]) -> list[Detections]:
    """Per image, the detections of every prompt chunk concatenated (``chunks[c][i]``: chunk ``c``, image ``i``).

    Each chunk is a full text pass with its own detection cap, as in GLIP's chunked evaluation;
    labels of all chunks are the vocabulary's labels, so merging is concatenation.
    """
    return [
        Detections(
            boxes=torch.cat([d.boxes for d in parts]),
            scores=torch.cat([d.scores for d in parts]),
            labels=torch.cat([d.labels for d in parts]),
        )
        for parts in zip(*chunks)
    ]


# The adapter name under which methods inject `peft` tuners (LoRA, DoRA, IA3) into a detector's layers.
PEFT_ADAPTER_NAME = "peft_method"


def is_slot_tensor(name: str) -> bool:
    """Whether a state-dict key was added by a method: under an extension slot, or a peft adapter."""
    parts = name.split(".")
    return any(part in SLOT_NAMES for part in parts) or PEFT_ADAPTER_NAME in parts


class DetectorBase(nn.Module):
    """What every detector backend provides (see the module docstring)."""

    tokenizer: Any
    frozen_work: Any = None  # a bench.train.frozen_cache.FrozenWorkCache, installed by the harness
    text_slots: int  # the most token positions of the text input (GLIP: 256); prompts and offsets are sized by it
    prompt_style: PromptStyle = GLIP_STYLE

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

    def adapter_sites(self) -> list[AdapterSite]:
        """The sublayers where bottleneck adapters can act, each with its ``output_adapter`` slot; a
        backend without any returns none."""
        return []

    def fusion_layers(self) -> list[FusionLayer]:
        raise NotImplementedError

    def text_encoder(self) -> nn.Module:
        raise NotImplementedError

    def set_activation_checkpointing(self, level: str) -> None:
        """Recompute activations in the backward pass at ``level`` (see the module docstring)."""
        raise NotImplementedError

    def set_attention_kernel(self, kind: str) -> None:
        """Compute attention with ``kind`` (see the module docstring)."""
        raise NotImplementedError

    def frozen_parts(self) -> dict[str, nn.Module]:
        """Named parts whose output depends on their inputs alone when frozen (see the module docstring)."""
        return {}

    def frozen_output(self, part: str, compute: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        """``compute(*inputs)`` for the frozen part ``part``, or its remembered result (``frozen_work``)."""
        if self.frozen_work is None:
            return compute(*inputs)
        return self.frozen_work.output(part, compute, inputs)

    def base_parameter_names(self) -> list[str]:
        """Parameters of the detector itself, excluding anything installed in a slot."""
        return [name for name, _ in self.named_parameters() if not is_slot_tensor(name)]

    # ----------------------------------------------------------------- prompts, shared by backends
    def check_fit(self, prompts: Sequence[Prompt]) -> None:
        """Refuse captions that do not fit the text slots next to the tokens the text hook inserts."""
        shift = self.text_encoder().token_shift()
        for prompt in prompts:
            if prompt.num_tokens + shift > self.text_slots:
                raise BenchError(
                    f"The caption {prompt.caption[:60]!r} needs {prompt.num_tokens} tokens and the text encoder's "
                    f"input_embedding_hook inserts {shift} more, over the model's {self.text_slots} text slots; "
                    "split the vocabulary into smaller chunks (chunk_size) or insert fewer context tokens."
                )

    def text_length(self, prompts: Sequence[Prompt]) -> int:
        """The text slots a batch of fitting prompts (:meth:`check_fit`) needs: its longest caption plus
        the tokens the ``input_embedding_hook`` inserts, rounded up to a multiple of
        :data:`TEXT_LENGTH_MULTIPLE`, at most ``text_slots``.

        Slots past the longest caption are padding, which every real token's computation masks, so
        they change no output beyond float rounding while costing text work in proportion (an
        ODinW caption of 5 classes needs 13 to 20 of GLIP's 256 slots). Rounding up costs at most 7
        padded slots, too few to measure on the CPU; in exchange the text matrices keep sizes that are
        multiples of 8, the alignment of half-precision tensor-core kernels on GPUs, and batches of
        similar captions share one shape.
        """
        needed = max(p.num_tokens for p in prompts) + self.text_encoder().token_shift()
        return min(-(-needed // TEXT_LENGTH_MULTIPLE) * TEXT_LENGTH_MULTIPLE, self.text_slots)

    def shift_prompts(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """The prompts with their token positions where the text encoder puts them (positive maps for
        the loss and for post-processing); the same objects when nothing is inserted."""
        shift = self.text_encoder().token_shift()
        if shift == 0:
            return list(prompts)
        shifted: dict[int, Prompt] = {}  # keep "one prompt for all images" recognisable by identity
        return [shifted.setdefault(id(p), p.shifted(shift)) for p in prompts]

    @staticmethod
    def per_image(prompts: Prompt | Sequence[Prompt], batch_size: int) -> list[Prompt]:
        """One prompt per image, from one prompt for all images or a sequence of one per image."""
        if isinstance(prompts, Prompt):
            return [prompts] * batch_size
        if len(prompts) != batch_size:
            raise ValueError(f"{len(prompts)} prompts for {batch_size} images; pass one prompt or one per image.")
        return list(prompts)
