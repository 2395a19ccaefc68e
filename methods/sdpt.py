"""SDPT: synchronous dual prompt tuning in the fusion space (ECCV 2024, arXiv:2407.11414; official code:
wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py, ``get_inverse`` and ``BiMultiHeadAttention``).

Per chosen fusion layer a learnable matrix of "unified prototype tokens" ``T`` ``[K, E]`` lives in the
layer's image-text attention space (``E`` = the output width of its image-query projection; 2048 in
GLIP, 1024 in Grounding DINO). It is mapped back into both modalities through the pseudo-inverses of
the layer's frozen query/key projections (``attention_projections()``: ``v_proj`` / ``l_proj`` in
GLIP, ``vision_proj`` / ``text_proj`` in Grounding DINO)::

    P_v = (T - b_v) pinv(W_v^T)    [K, v_dim]      P_l = (T - b_l) pinv(W_l^T)    [K, l_dim]

and appended after the layer-normalised image and text tokens (the fusion layer's
``token_extension`` slot attends over the extended sequences and strips the K rows again). Since
``W`` is tall, ``v_proj(P_v) = Π_v (T - b_v) + b_v`` with ``Π_v`` the projector onto col(W_v), not
``T`` itself (official ``get_inverse`` in wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py).

Differences from the official code (``BiMultiHeadAttention.forward`` in wuyongjianCODE/SDPT
maskrcnn_benchmark/utils/fuse_helper.py), all deliberate:

* the pseudo-inverses are computed once in float32 and cached as non-persistent buffers (the
  projections are frozen), instead of two SVDs per layer per step; they are recomputed when the
  projection weights change place, dtype or value (e.g. ``load_state_dict`` or ``.to()``);
* any batch size (the official code concatenates ``(1, K, .)`` with ``(B, N, .)``, so only B = 1 runs);
* ``text_prompt_visible``: the official code pads the text mask with zeros, so image queries never
  see ``P_l`` and only ``P_v`` acts (as K extra keys/values of the text<-image attention). ``False``
  (default) reproduces that; ``True`` gives the K text rows mask 1, the paper's stated intent.

Two methods are registered:

* ``sdpt``: only the prototype tokens train (the paper's prompt-only setting).
* ``sdpt-head``: the released README recipe, i.e. the tokens plus every parameter of the detector's
  ``head`` group (in GLIP: the DyHead's language layers, DyConv towers and prediction heads); the
  vision backbone, neck, text encoder and the fusion layers' own weights stay frozen (official: the README's
  ``FROZEE_SWINT``/``FROZEE_BERT`` in ``GeneralizedVLRCNN.forward``, modeling/detector/generalized_vl_rcnn.py,
  and ``froze_fuse`` in ``VLFuse.__init__``, modeling/rpn/vldyhead.py).

Defaults and their source (``SdptConfig.sources``; official = wuyongjianCODE/SDPT):

* ``num_tokens`` 100: the official ``MODEL.PROMPT.NUM_TOKENS`` default; the README's COCO command
  uses 700 (the preset ``sdpt-head@official``). ``layers`` None = every fusion layer (official
  ``cpt_layers`` covers all); ``shared`` False (official: one independent set per layer); ``init``
  "uniform", U(-1, 1) (official ``ECCV.init_way``; "normal" = N(0, 1) and "zeros" are the official
  alternatives we keep).
* ``sdpt-head``: lr 1e-5 (README ``BASE_LR``) and weight decay 0.01 (GLIP's ``glip_Swin_L.yaml``,
  which the README recipe inherits).
* ``sdpt``: lr 1e-2 is ours, the AdamW rate of every prompt method here
  (:data:`methods.coop.PROMPT_LR_SOURCE`). The README's 1e-5 was chosen for a recipe whose DyHead
  trains too; at that rate AdamW moves the U(-1, 1) tokens by about 0.02 in the 2000 README
  iterations, i.e. the prompts barely change, so it is no sensible rate for prompt-only tuning.
  Weight decay 0.01 as the README recipe.

Parameter count: ``K * E`` per chosen layer, or ``K * E`` once when ``shared`` (plus the head group
for ``sdpt-head``). Effective count (:func:`sdpt_effective_count`): ``T`` acts only through the
prompts, i.e. through ``T pinv(W_v^T)`` and, when the text prompts are visible, ``T pinv(W_l^T)``
(masked, ``P_l`` has no effect: image queries never see it and its own updates are stripped). A token
set therefore has ``K * rank`` degrees of freedom, the rank of the map ``T -> (T pinv(W^T) for each
acting projection W of each layer using the set)``: ``K * v_dim`` per layer with the text prompts
masked (only ``T``'s component in col(W_v) acts), ``K * min(E, v_dim + l_dim)`` when they are
visible, and for ``shared`` tokens the rank over all chosen layers at once (``K * min(E, sum of
v_dim)`` masked), never above ``K * E``. Exact ranks come from the layers' weights; on the meta
device the generic ``min`` values. ``sdpt-head`` adds its head group's allocation (an upper bound,
:mod:`bench.tuning.accounting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase, FusionLayer
from bench.options import AT_LEAST_ONE, NON_NEGATIVE
from bench.tuning.base import Method, MethodConfig, register_method, trainable_by_names, trainable_under
from methods.coop import PROMPT_LR_SOURCE

Init = Literal["uniform", "normal", "zeros"]
PinvFrom = Literal["base", "tuned"]
INITS: tuple[str, ...] = get_args(Init)
SDPT = "wuyongjianCODE/SDPT"


@dataclass(frozen=True)
class SdptConfig(MethodConfig):
    """``num_tokens``: K prototype tokens per layer; ``layers``: fusion-layer indices that get tokens
    (None = all); ``shared``: one token set for all chosen layers; ``init``: "uniform" (U(-1, 1)),
    "normal" (N(0, 1)) or "zeros"; ``text_prompt_visible``: text-side prompts get mask 1 (paper
    intent) instead of 0 (official code); ``pinv_from``: "base", the pseudo-inverses of the pre-trained
    projections, cached, or "tuned", of the projections as another method changes them (``sdpt+lora``:
    ``W + BA``), recomputed in every forward pass. Sources of the defaults: ``sources`` and the module
    docstring."""

    lr: float = 1e-2
    weight_decay: float = 0.01
    num_tokens: int = 100
    layers: tuple[int, ...] | None = None
    shared: bool = False
    init: Init = "uniform"
    text_prompt_visible: bool = False
    pinv_from: PinvFrom = "base"

    limits = {"num_tokens": AT_LEAST_ONE, "layers": NON_NEGATIVE}
    # added after results existed: keyed only when set otherwise, so the runs made before keep their keys
    keyed_when_set = {"pinv_from": "base"}

    sources = {
        "lr": PROMPT_LR_SOURCE + "; the released 1e-5 (sdpt-head) barely moves U(-1, 1) tokens",
        "weight_decay": f"official code: {SDPT} README command, which inherits GLIP's configs/pretrain/glip_Swin_L.yaml "
                        "(SOLVER.WEIGHT_DECAY 0.01)",
        "num_tokens": f"official code: {SDPT} maskrcnn_benchmark/config/defaults.py (MODEL.PROMPT.NUM_TOKENS 100; "
                      "the README uses 700, preset sdpt-head@official)",
        "layers": f"official code: {SDPT} maskrcnn_benchmark/config/defaults.py (cpt_layers: every fusion layer)",
        "shared": f"official code: {SDPT} maskrcnn_benchmark/utils/fuse_helper.py (each fusion layer owns its cpt_input)",
        "init": f"official code: {SDPT} maskrcnn_benchmark/config/defaults.py (ECCV.init_way 'uniform', U(-1, 1))",
        "text_prompt_visible": f"official code: {SDPT} maskrcnn_benchmark/utils/fuse_helper.py (text-side prompts "
                               "padded with mask 0)",
        "pinv_from": f"official code: {SDPT} maskrcnn_benchmark/utils/fuse_helper.py (get_inverse reads v_proj.weight, "
                     "which under its LoRA baseline is loralib's frozen base weight, not W + BA)",
    }

    def __post_init__(self) -> None:
        """Besides each value's own check: a layer list is refused here if empty or repeated (whether its
        indices exist depends on the model, so :func:`chosen_layers` checks that when installing)."""
        super().__post_init__()
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            self.refuse("layers", "a non-empty list of distinct fusion-layer indices (integers >= 0), or null for every layer")


@dataclass(frozen=True)
class SdptHeadConfig(SdptConfig):
    lr: float = 1e-5
    weight_decay: float = 0.01

    sources = {
        "lr": f"official code: {SDPT} README COCO command (SOLVER.BASE_LR 1e-5), tokens and DyHead together",
    }


def init_tokens(num_tokens: int, embed_dim: int, init: str) -> torch.Tensor:
    """A fresh ``[num_tokens, embed_dim]`` token matrix drawn as ``init`` says (global RNG)."""
    tokens = torch.empty(num_tokens, embed_dim)
    if init == "uniform":
        return tokens.uniform_(-1.0, 1.0)
    if init == "normal":
        return tokens.normal_(0.0, 1.0)
    if init == "zeros":
        return tokens.zero_()
    raise BenchError(f"SDPT init must be one of {INITS}, got {init!r}.")


def _pinv_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32, or the weight's own dtype when it is wider (float64 models, e.g. for rank checks)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _pinv_of_transpose(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pinv(W^T) [E, d_in], b [E])`` of a frozen ``Linear(d_in -> E)``, in at least float32."""
    weight = linear.weight.detach().to(_pinv_dtype(linear.weight))
    bias = linear.bias.detach().to(weight.dtype) if linear.bias is not None else weight.new_zeros(weight.shape[0])
    return torch.linalg.pinv(weight.t()), bias.clone()


def _pinv_of_affine(projection: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pinv(W^T), b)`` of the affine map a projection computes now, whatever wraps it (peft's LoRA:
    ``W + s B A``), read off the module itself: ``f(0) = b`` and ``f(I) = W^T + b``. Differentiable in
    the wrapper's parameters, so they learn through the prompts too."""
    base = projection.base_layer if hasattr(projection, "base_layer") else projection
    dtype = _pinv_dtype(base.weight)
    probe = torch.cat([torch.zeros(1, base.in_features), torch.eye(base.in_features)]).to(base.weight.device, base.weight.dtype)
    out = projection(probe).to(dtype)
    bias, weight_t = out[0], out[1:] - out[0]
    return torch.linalg.pinv(weight_t), bias


def _state_key(linear: nn.Linear) -> tuple:
    """What identifies the current values of a projection: storage, version counter, device, dtype."""
    key: tuple = ()
    for tensor in (linear.weight, linear.bias):
        if tensor is not None:
            key += (tensor.data_ptr(), tensor._version, tensor.device, tensor.dtype)
    return key


class ProjectedPrototypeTokens(nn.Module):
    """The ``token_extension`` of one fusion layer: ``T`` mapped into the image and text inputs.

    ``v_proj`` / ``l_proj`` are the layer's frozen query and key projections; they are referenced, not
    registered, so their parameters keep their names in the model. ``owner``: another instance whose
    tokens this one uses (the ``shared`` option); ``T`` is then stored only once, under the owner.
    """

    def __init__(self, v_proj: nn.Linear, l_proj: nn.Linear, num_tokens: int, init: str,
                 text_prompt_visible: bool, owner: "ProjectedPrototypeTokens | None" = None,
                 layer: FusionLayer | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # pinv_from="tuned": the projections are read from it each time
        if v_proj.out_features != l_proj.out_features:
            raise BenchError(f"SDPT needs v_proj and l_proj to share the attention width; got {v_proj.out_features} and {l_proj.out_features}.")
        object.__setattr__(self, "_projections", (v_proj, l_proj))
        object.__setattr__(self, "_owner", owner)
        if owner is None:
            self.tokens = nn.Parameter(init_tokens(num_tokens, v_proj.out_features, init))
        elif owner.prototype_tokens.shape != (num_tokens, v_proj.out_features):
            raise BenchError(
                f"Shared SDPT tokens {tuple(owner.prototype_tokens.shape)} do not fit a fusion layer of width "
                f"{v_proj.out_features}; use shared=False when the fusion layers differ in width."
            )
        self.text_prompt_visible = text_prompt_visible
        for name in ("pinv_v", "bias_v", "pinv_l", "bias_l"):
            self.register_buffer(name, torch.empty(0), persistent=False)
        self._cache_key: tuple | None = None
        self.refresh()

    @property
    def prototype_tokens(self) -> nn.Parameter:
        """``T`` ``[K, E]`` (this layer's own, or the shared owner's)."""
        return self.tokens if self._owner is None else self._owner.prototype_tokens

    def refresh(self) -> None:
        """Recompute the cached pseudo-inverses from the projections' current weights."""
        v_proj, l_proj = self._projections
        with torch.inference_mode(False), torch.no_grad():
            self.pinv_v, self.bias_v = _pinv_of_transpose(v_proj)
            self.pinv_l, self.bias_l = _pinv_of_transpose(l_proj)
        self._cache_key = _state_key(v_proj) + _state_key(l_proj)

    def _ensure_fresh(self) -> None:
        v_proj, l_proj = self._projections
        stale = self._cache_key != _state_key(v_proj) + _state_key(l_proj)
        if stale or self.pinv_v.dtype != _pinv_dtype(v_proj.weight) or self.pinv_v.device != v_proj.weight.device:
            self.refresh()

    def projected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_v [K, v_dim], P_l [K, l_dim])`` in the pseudo-inverses' precision (at least float32),
        differentiable in ``T`` (and, with ``pinv_from="tuned"``, in whatever changes the projections)."""
        tokens = self.prototype_tokens
        if self._layer is not None:
            with torch.autocast(device_type=tokens.device.type, enabled=False):
                maps = [_pinv_of_affine(module) for module in self._layer.attention_projections()]
                tokens = tokens.to(maps[0][0].dtype)
                return tuple((tokens - bias) @ pinv for pinv, bias in maps)
        self._ensure_fresh()
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            tokens = tokens.to(self.pinv_v.dtype)
            return (tokens - self.bias_v) @ self.pinv_v, (tokens - self.bias_l) @ self.pinv_l

    def extend(self, v_hat: torch.Tensor, l_hat: torch.Tensor, text_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append ``P_v`` to ``v_hat`` ``[B, N, v_dim]`` and ``P_l`` to ``l_hat`` ``[B, T, l_dim]``;
        the mask ``[B, T]`` gets K columns of 1 (text prompts visible) or 0 (official: masked)."""
        p_v, p_l = self.projected()
        batch, k = v_hat.shape[0], p_v.shape[0]
        v_ext = torch.cat([v_hat, p_v.to(v_hat.dtype).expand(batch, k, -1)], dim=1)
        l_ext = torch.cat([l_hat, p_l.to(l_hat.dtype).expand(batch, k, -1)], dim=1)
        pad = torch.full((batch, k), 1 if self.text_prompt_visible else 0, dtype=text_mask.dtype, device=text_mask.device)
        return v_ext, l_ext, torch.cat([text_mask, pad], dim=1)


def chosen_layers(model: DetectorBase, layers: tuple[int, ...] | None) -> list[FusionLayer]:
    """The fusion layers that get tokens, in model order (``layers`` None = all)."""
    available = model.fusion_layers()
    if layers is None:
        return list(available)
    bad = [i for i in layers if not 0 <= i < len(available)]
    if not layers or bad or len(set(layers)) != len(layers):
        raise BenchError(
            f"SDPT layers must be distinct indices in 0..{len(available) - 1} (this model has {len(available)} "
            f"fusion layers), or None for all; got {layers!r}."
        )
    return [available[i] for i in sorted(layers)]


def sdpt_token_count(model: DetectorBase, config: SdptConfig) -> int:
    """``K * E`` per chosen layer, or once when the tokens are shared."""
    widths = [layer.attention_projections()[0].out_features for layer in chosen_layers(model, config.layers)]
    return config.num_tokens * (widths[0] if config.shared else sum(widths))


def sdpt_effective_count(model: DetectorBase, config: SdptConfig) -> int:
    """``K`` times the rank of the map from a token set to the prompts that act, summed over the sets
    (one per chosen layer, or one for all when ``shared``)."""
    layers = chosen_layers(model, config.layers)
    token_sets = [layers] if config.shared else [[layer] for layer in layers]
    return config.num_tokens * sum(_acting_rank(layers_of_set, config.text_prompt_visible) for layers_of_set in token_sets)


def _acting_rank(layers: list[FusionLayer], text_prompt_visible: bool) -> int:
    """``rank([pinv(W^T) for every acting projection W of layers])``: the image-query projections, plus
    the text-key projections when the text prompts are visible. Computed as the prompts are (float32
    pseudo-inverses); on the meta device, where weights have no values, the generic rank
    ``min(E, sum of the projections' input widths)``."""
    acting = [projection for layer in layers for projection in layer.attention_projections()[: 2 if text_prompt_visible else 1]]
    if any(projection.weight.is_meta for projection in acting):
        return min(acting[0].out_features, sum(projection.in_features for projection in acting))
    maps = torch.cat([_pinv_of_transpose(projection)[0] for projection in acting], dim=1)
    return int(torch.linalg.matrix_rank(maps))


def install_tokens(model: DetectorBase, config: SdptConfig) -> dict[str, nn.Parameter]:
    """Put a :class:`ProjectedPrototypeTokens` into each chosen layer's slot; returns the tokens.
    (``config`` is valid by construction: its token count and init were checked when it was built.)"""
    owner = None
    trainable: dict[str, nn.Parameter] = {}
    for layer in chosen_layers(model, config.layers):
        image_query, text_key = layer.attention_projections()
        extension = ProjectedPrototypeTokens(image_query, text_key, config.num_tokens, config.init,
                                             config.text_prompt_visible, owner=owner,
                                             layer=layer if config.pinv_from == "tuned" else None)
        layer.token_extension = extension
        if config.shared and owner is None:
            owner = extension
        trainable.update(trainable_under(model, extension))
    return trainable


@register_method("sdpt", SdptConfig, "SDPT: prototype tokens in the fusion space, pseudo-inverse projected into both modalities",
                 family="fusion prototypes")
class Sdpt(Method):
    slots = ("token_extension",)
    identity_at_init = False  # the appended tokens change the text branch from the start

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        return install_tokens(model, self.config)

    def expected_trainable(self, model: DetectorBase) -> int:
        return sdpt_token_count(model, self.config)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """``K`` times the rank of the pseudo-inverse maps through which the tokens act (module docstring)."""
        return sdpt_effective_count(model, self.config)


@register_method("sdpt-head", SdptHeadConfig, "SDPT as released: prototype tokens plus the whole detection head (DyHead) trainable",
                 family="fusion prototypes")
class SdptHead(Method):
    identity_at_init = False
    slots = ("token_extension",)

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        head = model.parameter_groups()["head"]
        trainable = install_tokens(model, self.config)
        trainable.update(trainable_by_names(model, head))
        return trainable

    def expected_trainable(self, model: DetectorBase) -> int:
        head = set(model.parameter_groups()["head"])
        return sdpt_token_count(model, self.config) + sum(p.numel() for n, p in model.named_parameters() if n in head)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The tokens' rank count plus the head's allocation (the detector's own weights: an upper bound)."""
        head = self.expected_trainable(model) - sdpt_token_count(model, self.config)
        return sdpt_effective_count(model, self.config) + head
