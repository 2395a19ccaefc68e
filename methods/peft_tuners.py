"""LoRA, DoRA, IA3 and every other suitable tuner of the ``peft`` library, on the layers of chosen
parameter groups.

Targets are chosen by the detector's parameter groups (``model.parameter_groups()``): every
``nn.Linear`` (``nn.LayerNorm`` for LN tuning) whose weight belongs to one of the configured groups is
handed to peft by its exact module name, and peft wraps it in place. No layer is written by hand.

Defaults (each config's ``sources``): ``groups = ("fusion",)`` and rank 16 follow the SDPT authors'
LoRA baseline (``use_lora_cross`` in wuyongjianCODE/SDPT ``maskrcnn_benchmark/utils/fuse_helper.py``:
loralib r=16 on the six projections of every image-text fusion layer); ``alpha = rank`` (scaling 1) is
the LoRA paper's choice (Hu et al. 2022, §4.1: alpha set to the first r tried), while SDPT's loralib
default alpha 1 (scaling 1/16) is the preset ``lora@sdpt``; dropout 0 is loralib's default; lr 1e-3
(ten times full fine-tuning's) and weight decay 0 are ours. IA3 uses the same groups, lr and decay.

The catalogue (``peft:<tuner>``, :data:`TUNERS`): so that a comparison can include any tuner peft
offers without a hand-written method each, every non-prompt tuner of the installed peft that adapts
plain Linear layers (or LayerNorms) is registered as ``peft:<tuner>`` (``peft:loha``, ``peft:ln-tuning``
...). Its options are the simple-typed fields (int, float, bool, a choice of strings) of peft's config
dataclass, under peft's names and with peft's defaults, each sourced to that class
(``--method-set peft:loha.r=8`` reaches ``LoHaConfig(r=8)``), plus ``lr``, ``weight_decay`` and ``groups``
as for ``lora``. Fields that choose targets or would undo this module's choices (``target_modules``,
``layers_to_transform``, ``modules_to_save``, ``bias``, ``fan_in_fan_out``, the ``init_weights`` flags,
what peft saves ...) are not options (:data:`NOT_OPTIONS`). Each tuner states its trainable count as a
formula of its config and the targeted layers' shapes, read from peft's layer code, and whether the
model starts bit-identical, both checked by the contract tests. Tuners that cannot apply here are
listed with the reason in :data:`REFUSED_TUNERS` (prompt learning and others) and
:data:`UNREGISTERED_TUNERS` (they apply, but fail the contract with peft's defaults or would not train
as themselves under this harness's train/eval rule, :mod:`bench.train.modes`); asking for one by name
gives its reason. Effective counts (:mod:`bench.tuning.accounting`) are derived for VeRA, HRA and
LoKr (:attr:`Tuner.redundant`); the other tuners report their allocation
(:data:`EFFECTIVE_COUNT_NOT_DERIVED`).

What peft does to names: a wrapped layer's own tensors move from ``x.weight`` to
``x.base_layer.weight`` and the adapter's tensors appear as ``x.lora_A.<adapter>.weight`` (LoRA),
``x.lora_magnitude_vector.<adapter>.weight`` (DoRA), ``x.ia3_l.<adapter>`` (IA3), ``x.hada_w1_a.<adapter>``
(LoHa) and so on. Every adapter here is named :data:`ADAPTER_NAME`, so one path component marks a
method tensor, as slot names do for the model's own extension points. Peft's injection also freezes
every non-adapter parameter of the model; :func:`inject` undoes that, so ``install`` composes with
other methods (``sdpt+lora``).

peft has no bottleneck ("Houlsby") adapter tuner (huggingface/peft#244 is open, #2657 was closed),
so the ``adapter`` method is written by hand on the detectors' adapter sites (:mod:`methods.adapter`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import peft
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.lokr.layer import factorization
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import PeftType
from torch import nn
from transformers.activations import ACT2FN

from bench.errors import BenchError, UnknownNameError
from bench.models.base import PARAMETER_GROUPS, PEFT_ADAPTER_NAME, DetectorBase
from bench.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, field_default
from bench.tuning.base import METHODS, Method, MethodConfig, register_method, trainable_by_names
from methods.simple import WEIGHT_SUBSET_LR_SOURCE

# bench.models.base.PARAMETER_GROUPS as a type, so that a config with another group name is refused
# when it is built (a test keeps the two equal).
ParameterGroup = Literal["vision_backbone", "neck", "text_encoder", "fusion", "head"]

# The name of every adapter these methods inject; a path component that marks peft's tensors.
ADAPTER_NAME = PEFT_ADAPTER_NAME

SDPT_LORA = "wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py"
ADAPTER_WEIGHT_DECAY_SOURCE = ("ours: decay would pull DoRA's magnitudes and IA3's scales toward 0, away from the "
                               "identity they start at; LoRA shares the setting")

Layer = TypeVar("Layer", bound=nn.Module)


# ----------------------------------------------------------------------------- target selection
def _without_wrapper(path: str) -> str:
    return path[: -len(".base_layer")] if path.endswith(".base_layer") else path


def target_linears(model: DetectorBase, groups: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers whose weight is in one of ``groups``, by module name, in model order.

    Works before and after injection: a wrapped layer is found through its ``base_layer`` under its
    original name, and the adapters' own small Linear layers (``lora_A`` ...) are never targets.
    """
    return target_layers(model, groups, nn.Linear)


def target_layers(model: DetectorBase, groups: tuple[str, ...], kind: type[Layer]) -> dict[str, Layer]:
    """The layers of type ``kind`` whose weight is in one of ``groups`` (see :func:`target_linears`)."""
    bad = [g for g in groups if g not in PARAMETER_GROUPS]
    if not groups or bad:
        raise BenchError(f"peft target groups must be a non-empty subset of {PARAMETER_GROUPS}; got {groups!r}.")
    modules = dict(model.named_modules())
    adapter_prefixes = tuple(f"{name}." for name, module in modules.items() if isinstance(module, BaseTunerLayer))
    all_groups = model.parameter_groups()
    chosen: dict[str, Layer] = {}
    for group in groups:
        for name in all_groups[group]:
            if not name.endswith(".weight"):
                continue
            path = name[: -len(".weight")]
            if path.startswith(adapter_prefixes) and not path.endswith(".base_layer"):
                continue  # a tensor of an adapter installed earlier
            path = _without_wrapper(path)
            module = _unwrapped(modules[path])
            if isinstance(module, kind):
                chosen[path] = module
    if not chosen:
        raise BenchError(f"The parameter groups {groups!r} of this model hold no nn.{kind.__name__} layer for peft to adapt; "
                         "choose others.")
    return chosen


def inject(model: DetectorBase, config: peft.PeftConfig, targets: list[str]) -> dict[str, nn.Parameter]:
    """Let peft wrap ``targets`` (exact module names) and mark only the new adapter tensors trainable.

    ``requires_grad`` of every parameter that existed before is restored afterwards (peft freezes all
    non-adapter parameters, which would undo what a method installed before this one marked), and each
    wrapped layer keeps the train or eval mode it had (peft builds its layers in train mode, so a model
    restored in eval mode would otherwise apply an adapter's dropout or noise to its outputs).

    Tuners whose tensors are shared by all their layers (VeRA's random projections, Uni-LoRA's vector)
    are refused by ``peft.inject_adapter_in_model``, because peft keeps the shared tensors on the tuner
    object, which that function drops. It runs the same tuner class, so here the tuner is run directly;
    it is kept only while every one of its tensors is also registered in a layer of the model (a layer
    holds a reference), so that ``model.to``, ``state_dict`` and deep copies carry them.
    """
    before = {id(p): p.requires_grad for p in model.parameters()}
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise BenchError("This model already holds peft adapters; apply a peft method to a fresh base model.")
    tuner_class = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    if getattr(tuner_class, "uses_shared_state", False):  # older peft releases lack the attribute
        tuner = tuner_class(model, config, adapter_name=ADAPTER_NAME)
        carried = {id(t) for t in (*model.parameters(), *model.buffers())}
        if any(id(t) not in carried for t in (*tuner.parameters(), *tuner.buffers())):
            raise BenchError(f"peft's {type(tuner).__name__} keeps tensors that no layer of the model holds; it cannot be used here.")
    else:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for module in model.modules():  # peft's new layers start in train mode; keep the mode of the layer each wraps
        if isinstance(module, BaseTunerLayer):
            module.train(module.get_base_layer().training)
    new = []
    for name, parameter in model.named_parameters():
        if id(parameter) in before:
            parameter.requires_grad_(before[id(parameter)])
        else:
            new.append(name)
    wanted = tuple(f"{t}." for t in targets)
    stray = [n for n in new if not n.startswith(wanted) or f".{ADAPTER_NAME}." not in f"{n}."]
    if stray:
        raise BenchError(f"peft added parameters outside the chosen layers: {stray[:3]}.")
    return trainable_by_names(model, new)


def _unwrapped(layer: nn.Module) -> nn.Module:
    """The layer itself, whether or not peft has wrapped it."""
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


def low_rank_dimension(rank: int, rows: int, columns: int) -> int:
    """``rho (rows + columns) - rho^2`` with ``rho = min(rank, rows, columns)``: the dimension of the
    ``rows x columns`` matrices of rank at most ``rho``, which ``B A`` sweeps; ``(A, B)`` and
    ``(G A, B G^-1)`` give the same product for every invertible ``r x r`` ``G``."""
    rho = min(rank, rows, columns)
    return rho * (rows + columns) - rho * rho


# ----------------------------------------------------------------------------- LoRA and DoRA
@dataclass(frozen=True)
class LoraMethodConfig(MethodConfig):
    """``groups``: parameter groups whose Linear layers get LoRA; ``rank``, ``alpha`` (scaling
    ``alpha / rank``) and ``dropout`` as in peft's ``LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    groups: tuple[ParameterGroup, ...] = ("fusion",)
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0

    limits = {"rank": AT_LEAST_ONE, "alpha": POSITIVE, "dropout": Range(0, 1, high_open=True)}

    sources = {
        "lr": WEIGHT_SUBSET_LR_SOURCE,
        "weight_decay": ADAPTER_WEIGHT_DECAY_SOURCE,
        "groups": f"official code: {SDPT_LORA} (use_lora_cross: LoRA on the fusion layers' projections)",
        "rank": f"official code: {SDPT_LORA} (r=16)",
        "alpha": "paper: LoRA (Hu et al., ICLR 2022) §4.1 sets alpha to the first r tried, i.e. scaling 1 "
                 "(SDPT's loralib alpha 1 is the preset lora@sdpt)",
        "dropout": "official code: microsoft/LoRA loralib/layers.py (lora_dropout=0), as SDPT's LoRA baseline uses it",
    }


@register_method("lora", LoraMethodConfig, "LoRA (peft) on the Linear layers of chosen parameter groups (default: fusion)",
                 family="low-rank updates")
class Lora(Method):
    """``W x + (alpha / r) B A x``, B zero at init (peft's default), so the model starts unchanged."""

    identity_at_init = True
    use_dora = False

    def targets(self, model: DetectorBase) -> dict[str, nn.Linear]:
        return target_linears(model, self.config.groups)

    def peft_config(self, targets: list[str]) -> peft.LoraConfig:
        return peft.LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
            target_modules=targets, bias="none", init_lora_weights=True, use_dora=self.use_dora,
        )

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        targets = list(self.targets(model))
        return inject(model, self.peft_config(targets), targets)

    def expected_trainable(self, model: DetectorBase) -> int:
        """``r (in + out)`` per targeted Linear (A is ``r x in``, B is ``out x r``)."""
        return sum(self.config.rank * (m.in_features + m.out_features) for m in self.targets(model).values())

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """``r (in + out) - r^2`` per targeted Linear (:func:`low_rank_dimension`): what the updates
        ``B A`` span. Exact on the fusion projections (the default targets), whose multi-head layers
        see every update; an upper bound where a frozen symmetry hides part of an update (e.g. the key
        projection of a softmax self-attention over LayerNorm-ed inputs, or a one-head fusion layer,
        where query and key updates share a gauge)."""
        return sum(low_rank_dimension(self.config.rank, m.out_features, m.in_features) for m in self.targets(model).values())


@register_method("dora", LoraMethodConfig, "DoRA (peft LoRA with use_dora): LoRA direction plus a learned per-output magnitude",
                 family="low-rank updates")
class Dora(Lora):
    """``m * (W + s B A) / ||W + s B A||_row``; peft initialises ``m`` to the row norms of ``W``.

    With B = 0 the forward pass recomputes the same norms, so ``m / ||W||`` is exactly 1 and peft adds
    ``(m / ||W|| - 1) * W x = 0``: the model starts bit-identical (checked by the contract tests).
    """

    identity_at_init = True
    use_dora = True

    def expected_trainable(self, model: DetectorBase) -> int:
        """LoRA's ``r (in + out)`` plus the magnitude vector (``out``) per targeted Linear."""
        return super().expected_trainable(model) + sum(m.out_features for m in self.targets(model).values())

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """LoRA's count plus the magnitudes (``out``) per targeted Linear, at most ``in * out``: the
        row normalisation removes only radial directions, which the low-rank updates do not reach
        unless they reach every matrix."""
        return sum(
            min(low_rank_dimension(self.config.rank, m.out_features, m.in_features) + m.out_features, m.in_features * m.out_features)
            for m in self.targets(model).values()
        )


# ----------------------------------------------------------------------------- IA3
@dataclass(frozen=True)
class Ia3MethodConfig(MethodConfig):
    """``groups``: parameter groups whose Linear layers get IA3 vectors; ``feedforward``: module-name
    suffixes (e.g. ``"mlp.fc2"``, ``"output.dense"``) of targeted layers whose *input* is scaled
    instead of their output (peft's ``feedforward_modules``). Default: none, so every targeted
    projection's output is rescaled (IA3's rescaling of keys and values, applied to all fusion projections)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    groups: tuple[ParameterGroup, ...] = ("fusion",)
    feedforward: tuple[str, ...] = ()

    sources = {
        "lr": WEIGHT_SUBSET_LR_SOURCE,
        "weight_decay": ADAPTER_WEIGHT_DECAY_SOURCE,
        "groups": "ours: the fusion layers, the targets of the lora default and of SDPT's LoRA baseline",
        "feedforward": "ours: GLIP's fusion layers have no feed-forward block, so every targeted output is rescaled "
                       "(IA3 rescales keys and values)",
    }


@register_method("ia3", Ia3MethodConfig, "IA3 (peft): learned scaling vectors on the Linear layers of chosen parameter groups",
                 family="scalings and shifts")
class Ia3(Method):
    """``l * (W x)`` (or ``W (l * x)`` for feedforward layers) with ``l`` initialised to ones."""

    identity_at_init = True

    def targets(self, model: DetectorBase) -> dict[str, nn.Linear]:
        return target_linears(model, self.config.groups)

    def feedforward_targets(self, targets: dict[str, nn.Linear]) -> list[str]:
        suffixes = self.config.feedforward
        chosen = [n for n in targets if any(n == s or n.endswith(f".{s}") for s in suffixes)]
        unused = [s for s in suffixes if not any(n == s or n.endswith(f".{s}") for n in targets)]
        if unused:
            raise BenchError(f"IA3 feedforward suffixes {unused} match no targeted layer; targets look like {list(targets)[:2]}.")
        return chosen

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        targets = self.targets(model)
        config = peft.IA3Config(target_modules=list(targets), feedforward_modules=self.feedforward_targets(targets), init_ia3_weights=True)
        return inject(model, config, list(targets))

    def expected_trainable(self, model: DetectorBase) -> int:
        """``in`` per feedforward layer (its input is scaled), ``out`` per other targeted Linear."""
        targets = self.targets(model)
        feedforward = set(self.feedforward_targets(targets))
        return sum(m.in_features if n in feedforward else m.out_features for n, m in targets.items())

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The scales less ``E`` for every fusion layer whose query and key projections both have their
        outputs scaled: its logits see only the product of a channel's two scales."""
        targets = self.targets(model)
        feedforward = set(self.feedforward_targets(targets))
        output_scaled = {id(m) for n, m in targets.items() if n not in feedforward}
        shared = 0
        for layer in model.fusion_layers():
            query, key = (_unwrapped(p) for p in layer.attention_projections())
            if id(query) in output_scaled and id(key) in output_scaled:
                shared += query.out_features
        return self.expected_trainable(model) - shared


# ----------------------------------------------------------------------------- the peft catalogue
PEFT_VERSION = ".".join(peft.__version__.split(".")[:2])
DROPOUT = Range(0, 1, high_open=True)

# Fields of peft's configs that are never options here, and why (besides PeftConfig's own fields).
NOT_OPTIONS: dict[str, str] = {
    "target_modules": "targets are chosen by parameter group (the groups option)",
    "exclude_modules": "targets are chosen by parameter group (the groups option)",
    "layers_to_transform": "targets are chosen by parameter group (the groups option)",
    "layers_pattern": "targets are chosen by parameter group (the groups option)",
    "rank_pattern": "a per-module override by name pattern; one setting serves every target here",
    "alpha_pattern": "a per-module override by name pattern; one setting serves every target here",
    "n_frequency_pattern": "a per-module override by name pattern; one setting serves every target here",
    "modules_to_save": "would train whole modules of the detector besides the adapter",
    "bias": "would train the base layers' own biases (bitfit's tensors), which inject() leaves as they were",
    "fan_in_fan_out": "for GPT-2's Conv1D layers, which store their weight transposed; wrong for nn.Linear",
    "init_weights": "peft's default initialisation is kept; it decides whether the model starts unchanged",
    "save_projection": "what peft's own checkpoints hold; a tuned state here holds the trained tensors",
    "save_indices": "what peft's own checkpoints hold; a tuned state here holds the trained tensors",
    "save_precomputed_indices": "what peft's own checkpoints hold; a tuned state here holds the trained tensors",
    "use_effective_conv2d": "applies to Conv layers only, which are never targets here",
}

# The limits of options whose meaning is the same in every tuner that has them; the others are given
# per tuner. A number field without a limit is not offered (tests/methods/test_peft_catalogue.py
# checks that no field of the installed peft is left out so).
COMMON_LIMITS: dict[str, Range] = {
    "r": AT_LEAST_ONE, "alpha": POSITIVE, "scaling": POSITIVE,
    **{seed: NON_NEGATIVE for seed in ("projection_prng_key", "random_loc_seed", "proj_seed", "projection_seed",
                                        "random_seed", "generator_seed")},
}

LayerCount = Callable[[Any, nn.Module], int]


@dataclass(frozen=True)
class Tuner:
    """One peft tuner in the catalogue: how to count what it trains, and what of its config is an option.

    ``per_layer(peft_config, layer)`` is the number of parameters peft adds to one targeted layer (the
    unwrapped ``nn.Linear`` or ``nn.LayerNorm``); ``shared(peft_config, layers)`` those it adds once
    for all ``layers`` targeted layers. ``excluded``: fields of this tuner that are not options, with
    the reason; ``option_types``: the option type of a field whose peft annotation has none (a plain ``str``,
    an int-or-fraction); ``limits``: ranges besides :data:`COMMON_LIMITS`. ``redundant(peft_config,
    layer)``: the directions of one targeted layer's parameters that act on nothing (the gauges of
    the tuner's parametrisation), so that the effective count is the allocation less these; derived
    in its docstring and checked against Jacobian ranks (tests/methods/test_effective_counts.py);
    None where no derivation was made (:data:`EFFECTIVE_COUNT_NOT_DERIVED`).
    """

    slug: str
    peft_type: str  # the name of the PeftType member, absent from older peft releases
    family: str  # a key of bench.tuning.base.FAMILIES
    description: str
    identity_at_init: bool
    per_layer: LayerCount
    layer: type[nn.Module] = nn.Linear
    shared: Callable[[Any, int], int] = lambda config, layers: 0
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)
    option_types: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, Range] = dataclasses.field(default_factory=dict)
    redundant: LayerCount | None = None

    @property
    def name(self) -> str:
        return f"peft:{self.slug}"

    @property
    def available(self) -> bool:
        """Whether the installed peft has this tuner."""
        return self.peft_type in PeftType.__members__

    @property
    def peft_config_class(self) -> type[peft.PeftConfig]:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[self.peft_type]]


# ----------------------------------------------------------------------------- counts, from peft's layer code
def _boft(config: Any, layer: nn.Linear) -> int:
    """``boft_R``: ``in / b`` blocks of ``b x b`` (one butterfly factor), ``boft_s``: one scale per output."""
    block = config.boft_block_size or layer.in_features // config.boft_block_num
    return layer.in_features * block + layer.out_features


def _lokr_factors(config: Any, layer: nn.Linear) -> tuple[tuple[int, int, bool], tuple[int, int, bool]]:
    """``W = w1 (x) w2`` with ``out = a b``, ``in = c d`` (peft's ``factorization``): the factors'
    shapes ``(a, c)`` and ``(b, d)``, and whether each is stored as a rank-``r`` product (when the rank
    is below half its larger side; ``w1`` only with ``decompose_both``)."""
    a, b = factorization(layer.out_features, config.decompose_factor)
    c, d = factorization(layer.in_features, config.decompose_factor)
    r = config.r
    return (a, c, bool(config.decompose_both) and r < max(a, c) / 2), (b, d, r < max(b, d) / 2)


def _lokr(config: Any, layer: nn.Linear) -> int:
    """Each factor full (rows x columns) or a rank-``r`` product (``r`` times the sides' sum)."""
    return sum(config.r * (rows + columns) if factored else rows * columns
               for rows, columns, factored in _lokr_factors(config, layer))


def _lokr_redundant(config: Any, layer: nn.Linear) -> int:
    """One scale between the factors (``(s w1) (x) (w2 / s)`` is the same update), and in a factor
    stored as a product ``u v`` the gauge of that product, as for LoRA (:func:`low_rank_dimension`)."""
    return 1 + sum(config.r * (rows + columns) - low_rank_dimension(config.r, rows, columns)
                   for rows, columns, factored in _lokr_factors(config, layer) if factored)


def _hra_redundant(config: Any, layer: nn.Linear) -> int:
    """HRA multiplies the weight by ``r`` Householder reflections ``I - 2 u u^T / |u|^2`` of the input
    space. The product depends on the ``r`` vectors only through their span (``r (in - r)`` directions)
    and the product's action inside it, an element of ``O(r)`` (``r (r - 1) / 2``); so of ``r in`` stored
    numbers ``r (r + 1) / 2`` act on nothing (each vector's length among them). With Gram-Schmidt
    (``apply_GS``) the product is ``I - 2 U U^T`` of the orthonormalised vectors, their span alone:
    ``r^2``."""
    r = min(config.r, layer.in_features)
    return r * r if config.apply_GS else r * (r + 1) // 2


def _vera_redundant(config: Any, layer: nn.Linear) -> int:
    """VeRA's update ``diag(b) B diag(d) A`` (``B``, ``A`` frozen and shared) is the same for ``(s b,
    d / s)``: one direction per layer."""
    return 1


def _oft_block_size(config: Any, in_features: int) -> int:
    """peft's block size: ``oft_block_size`` (or ``in / r``), moved to the nearest divisor of ``in``
    when it is none (``OFTLayer.adjust_oft_parameters``, ties to the smaller)."""
    wanted = config.oft_block_size if config.r == 0 else config.r
    if wanted >= in_features:
        adjusted = in_features
    else:
        higher = wanted
        while higher <= in_features and in_features % higher:
            higher += 1
        lower = wanted
        while lower > 1 and in_features % lower:
            lower -= 1
        adjusted = lower if wanted - lower <= higher - wanted else higher
    return adjusted if config.r == 0 else in_features // adjusted


def _oft(config: Any, layer: nn.Linear) -> int:
    """The upper triangle of a skew-symmetric ``b x b`` generator per block (one block with ``block_share``)."""
    block = _oft_block_size(config, layer.in_features)
    return (1 if config.block_share else layer.in_features // block) * (block * (block - 1) // 2)


def _glora(config: Any, layer: nn.Linear) -> int:
    """Paths A and B (``lora``: ``r (out + in)`` each, ``vector``: ``out``, ``constant``: 1), then, only for
    a layer with a bias, C (``lora``: ``r (in + 1)``, ``vector``: ``in``) and D, E (``vector``: ``out``
    each, ``constant``: 1 each)."""
    r, fan_in, fan_out = config.r, layer.in_features, layer.out_features
    a_b = {"lora": r * (fan_out + fan_in), "vector": fan_out, "constant": 1, "none": 0}[config.config_A_B]
    if layer.bias is None:
        return 2 * a_b
    c = {"lora": r * (fan_in + 1), "vector": fan_in, "none": 0}[config.config_C]
    d_e = {"vector": fan_out, "constant": 1, "none": 0}[config.config_D_E]
    return 2 * a_b + c + 2 * d_e


def _randlora(config: Any, layer: nn.Linear) -> int:
    """``n = ceil(min(in, out) / r)`` frozen random bases: ``lambda`` is ``r x n``, ``gamma`` ``n x min(in, out)``."""
    smaller = min(layer.in_features, layer.out_features)
    bases = math.ceil(smaller / config.r)
    return config.r * bases + bases * smaller


def _osf_rank(config: Any, layer: nn.Linear) -> int:
    """The trainable rank: ``min(in, out)`` less the preserved ``effective_rank`` (default half of it)."""
    smaller = min(layer.in_features, layer.out_features)
    preserved = smaller // 2 if config.effective_rank is None else min(smaller, config.effective_rank)
    return smaller - preserved


def _psoft(config: Any, layer: nn.Linear) -> int:
    """The ``r x r`` rotation's generator (its upper triangle with ``psoft_orth``) and up to two ``r``-vectors."""
    r = config.r
    rotation = r * (r - 1) // 2 if config.psoft_orth else r * r
    return rotation + r * (config.psoft_mag_a + config.psoft_mag_b)


def _supertuning(config: Any, layer: nn.Linear) -> int:
    """``int(in out (1 - sparsity))`` weight entries, plus a LoRA of rank ``r`` when one is set."""
    entries = int(layer.in_features * layer.out_features * (1 - config.sparsity))
    return entries + (0 if config.r is None else config.r * (layer.in_features + layer.out_features))


def _tinylora_groups(config: Any, layers: int) -> int:
    """One trainable ``u``-vector per group of layers: ``max(1, round(layers (1 - weight_tying)))`` groups."""
    return config.u * max(1, round(layers * (1.0 - config.weight_tying)))


UNUSED_WITH_DEFAULT_INIT = "used only by an init_weights other than peft's default, which is kept"
# LoHa's and LoKr's dropouts act only while the wrapped layer itself is in train mode, which the harness's
# rule (bench/train/modes.py: a module whose own weights are all frozen runs in eval mode) never sets,
# so as options they would do nothing.
_NEVER_IN_TRAIN_MODE = "acts only while the wrapped layer is in train mode, which bench/train/modes.py never sets for it"
WRAPPER_MODE_DROPOUTS = {"rank_dropout": _NEVER_IN_TRAIN_MODE, "module_dropout": _NEVER_IN_TRAIN_MODE}

TUNERS: tuple[Tuner, ...] = (
    Tuner("beft", "BEFT", "biases", "peft BEFT: a trainable offset added to each targeted Linear's output",
          True, lambda c, m: m.out_features),
    Tuner("boft", "BOFT", "rotations", "BOFT (peft): a block-diagonal orthogonal rotation of each Linear's input plus a per-output scale",
          True, _boft, excluded={"boft_n_butterfly_factor": "peft honours it only where its CUDA kernel compiles and silently uses 1 "
                                                            "elsewhere, so the method would depend on the machine"},
          limits={"boft_block_size": NON_NEGATIVE, "boft_block_num": NON_NEGATIVE, "boft_dropout": DROPOUT}),
    Tuner("deft", "DEFT", "low-rank updates", "DeFT (peft): replaces a learned rank-r subspace of each Linear's output",
          False, lambda c, m: c.r * m.out_features + (0 if c.para else c.r * m.in_features),
          excluded={"init_scale": UNUSED_WITH_DEFAULT_INIT}, limits={"deft_dropout": DROPOUT}),
    Tuner("fourierft", "FOURIERFT", "sparse or spectral updates", "FourierFT (peft): a weight update from trainable coefficients at random 2D frequencies",
          False, lambda c, m: c.n_frequency, option_types={"random_loc_seed": int},
          limits={"n_frequency": AT_LEAST_ONE}),
    Tuner("glora", "GLORA", "low-rank updates", "GLoRA (peft): low-rank, vector or scalar scale and shift paths on each Linear's weight and bias",
          True, _glora),
    Tuner("gralora", "GRALORA", "low-rank updates", "GraLoRA (peft): a k x k grid of block-wise low-rank updates of each Linear",
          True, lambda c, m: (c.r + c.hybrid_r) * (m.in_features + m.out_features),
          limits={"hybrid_r": NON_NEGATIVE, "gralora_dropout": DROPOUT, "gralora_k": AT_LEAST_ONE}),
    Tuner("hira", "HIRA", "low-rank updates", "HiRA (peft): the Hadamard product of each frozen weight with a low-rank update",
          True, lambda c, m: c.r * (m.in_features + m.out_features), limits={"hira_dropout": DROPOUT}),
    Tuner("hra", "HRA", "rotations", "HRA (peft): a chain of r Householder reflections of each Linear's input",
          False, lambda c, m: c.r * m.in_features, redundant=_hra_redundant),
    Tuner("ln-tuning", "LN_TUNING", "scalings and shifts", "LN tuning (peft): trains a copy of every LayerNorm of the chosen parameter groups",
          True, lambda c, m: sum(p.numel() for p in m.parameters()), layer=nn.LayerNorm),
    Tuner("loha", "LOHA", "low-rank updates", "LoHa (peft): the Hadamard product of two low-rank updates of each Linear",
          True, lambda c, m: 2 * c.r * (m.in_features + m.out_features), excluded=WRAPPER_MODE_DROPOUTS),
    Tuner("lokr", "LOKR", "low-rank updates", "LoKr (peft): a Kronecker product update of each Linear",
          True, _lokr, excluded={**WRAPPER_MODE_DROPOUTS, "rank_dropout_scale": "rescales rank_dropout, which is not an option"},
          limits={"decompose_factor": Range(-1)}, redundant=_lokr_redundant),
    Tuner("oft", "OFT", "rotations", "OFT (peft): a block-diagonal orthogonal rotation of each Linear's input",
          True, _oft, limits={"r": NON_NEGATIVE, "oft_block_size": NON_NEGATIVE, "module_dropout": DROPOUT, "eps": POSITIVE,
                              "num_cayley_neumann_terms": AT_LEAST_ONE}),
    Tuner("osf", "OSF", "low-rank updates", "OSF (peft): trains the weaker singular directions of each Linear (half by default), the others frozen",
          False, lambda c, m: _osf_rank(c, m) * (m.in_features + m.out_features + 1),
          option_types={"effective_rank": int | None}, limits={"effective_rank": AT_LEAST_ONE}),
    Tuner("peanut", "PEANUT", "low-rank updates", "PEANuT (peft): a small network of each frozen weight gives its update",
          True, lambda c, m: 2 * c.r * m.out_features + 2 * c.depth * c.r * c.r,
          option_types={"act_fn": Literal[tuple(sorted(ACT2FN))]}, limits={"depth": NON_NEGATIVE}),
    Tuner("psoft", "PSOFT", "rotations", "PSOFT (peft): an orthogonal rotation inside each Linear's principal rank-r subspace",
          True, _psoft, excluded={"ab_svd_init": "an initialisation choice; peft's default keeps the model unchanged at the start"},
          limits={"psoft_alpha": POSITIVE, "psoft_dropout": DROPOUT, "psoft_svd_lowrank_niter": AT_LEAST_ONE,
                  "num_cayley_neumann_terms": AT_LEAST_ONE, "cayley_neumann_eps": POSITIVE}),
    Tuner("randlora", "RANDLORA", "low-rank updates", "RandLoRA (peft): full-rank updates from frozen random bases with trainable scales",
          True, _randlora, limits={"randlora_dropout": DROPOUT, "randlora_alpha": POSITIVE}),
    Tuner("supertuning", "SUPERTUNING", "sparse or spectral updates", "Super-Tuning (peft): trains a sparse set of each Linear's weight entries",
          True, _supertuning, limits={"sparsity": Range(0, 1, high_open=True), "lora_alpha": POSITIVE, "lora_dropout": DROPOUT}),
    Tuner("tinylora", "TINYLORA", "low-rank updates", "TinyLoRA (peft): one tiny vector per group of layers, projected into each weight's SVD",
          True, lambda c, m: 0, shared=_tinylora_groups, excluded={"init_v_bound": UNUSED_WITH_DEFAULT_INIT},
          limits={"u": AT_LEAST_ONE, "weight_tying": Range(0, 1), "tinylora_dropout": DROPOUT}),
    Tuner("unilora", "UNILORA", "low-rank updates", "Uni-LoRA (peft): every LoRA entry drawn from one shared trainable vector",
          False, lambda c, m: 0, shared=lambda c, layers: c.theta_d_length,
          limits={"theta_d_length": AT_LEAST_ONE, "unilora_dropout": DROPOUT, "init_theta_d_bound": POSITIVE}),
    Tuner("vera", "VERA", "low-rank updates", "VeRA (peft): frozen random low-rank matrices shared by all layers, trainable scaling vectors",
          True, lambda c, m: m.out_features + c.r, limits={"vera_dropout": DROPOUT, "d_initial": POSITIVE},
          redundant=_vera_redundant),
)

PROMPT_LEARNING = ("a prompt-learning tuner: peft feeds its virtual tokens to a transformers language model through the "
                   "input embeddings or the attention's past keys and values (PeftModel), not to Linear layers; the "
                   "prompt methods here are coop, maple, vpt, glip-prompt and sdpt")

# peft tuners that do not apply to these detectors, by the method name they would have, and why.
REFUSED_TUNERS: dict[str, str] = {
    "peft:prompt-tuning": PROMPT_LEARNING,
    "peft:multitask-prompt-tuning": PROMPT_LEARNING,
    "peft:p-tuning": PROMPT_LEARNING,
    "peft:prefix-tuning": PROMPT_LEARNING,
    "peft:cpt": PROMPT_LEARNING + " (CPT: causal language models only)",
    "peft:cartridge": PROMPT_LEARNING,
    "peft:adaption-prompt": "it adds gated prompts inside LLaMA-style attention modules, found by their class, of a causal "
                            "language model; these detectors have none",
    "peft:shadow": "it wraps whole decoder blocks of a causal language model with a shadow network built from the model's "
                   "transformers config, and peft's injection refuses it",
    "peft:xlora": "it mixes LoRA adapters trained beforehand and loaded from paths, with a classifier on a transformers "
                  "model's hidden states (PeftModel only); there are no adapters to mix",
    "peft:poly": "it routes between LoRA skills by a task id passed with every forward call; the detectors' forward "
                 "passes carry none",
    "peft:trainable-tokens": "it trains rows of token embedding matrices (nn.Embedding), not Linear layers",
    "peft:adalora": "the training loop would have to call its rank allocator (update_and_allocate) at every step and add "
                    "its orthogonality penalty to the loss; without them it is LoRA in SVD form, not AdaLoRA",
    "peft:adamss": "it needs scikit-learn, which this project does not install",
    "peft:lily": "it shares its matrices between the layers that match the same target_modules suffix; targets given by "
                 "exact module names (parameter groups) would share nothing",
    "peft:frod": "its shared projections belong to the tuner object, which peft's injection drops; the layers keep plain "
                 "references that model.to(device) would not move",
    "peft:lora": "peft's LoRA is the method lora (DoRA: dora)",
    "peft:ia3": "peft's IA3 is the method ia3",
}

# peft tuners that apply to Linear layers but fail the method contract (tests/methods/test_contract.py)
# on the GLIP fixture or the tiny Grounding DINO with peft's defaults, or would not train as
# themselves under the harness, and why. The tiny detectors' fusion projections are 64 -> 128 /
# 128 -> 64 (GLIP) and 32 -> 32 (Grounding DINO) wide.
UNREGISTERED_TUNERS: dict[str, str] = {
    "peft:c3a": "peft's default block_size 256 must divide in_features (64, 128 and 32 in the contract tests' detectors)",
    "peft:delora": "at the lr of lora (1e-3) and peft's delora_lambda 15 its first update diverges on the tiny Grounding "
                   "DINO (batch 1: loss 19.2, then 498, and never back below 19.2 in 20 steps); its count is "
                   "r (in + out) + 1 per layer",
    "peft:miss": "peft's default r 64 must be at most in_features (32 in the tiny Grounding DINO)",
    "peft:pvera": "it samples its low-rank code only while the wrapped layer is in train mode, which bench/train/modes.py "
                  "never sets for a layer whose own weights are frozen: it would train as a deterministic VeRA",
    "peft:road": "peft's default group_size 64 must divide out_features (32 in the tiny Grounding DINO)",
    "peft:shira": "peft's default r 32 asks for 2048 entries of a 32 x 32 weight (the tiny Grounding DINO), and its mask "
                  "seed defaults to the global random generator, so a saved state could not be restored",
    "peft:vblora": "peft's default vector_length 256 must divide in_features (64, 128 and 32 in the contract tests' detectors)",
    "peft:waveft": "peft's default n_frequency 2592 exceeds in x out (1024 in the tiny Grounding DINO)",
}

# Catalogue tuners whose effective count (bench.tuning.accounting) is their allocation, an upper bound
# that no derivation has checked yet: their factorisations (Hadamard products, Cayley-parametrised
# rotations, shared vectors, frequencies) have redundancies of their own still to count.
EFFECTIVE_COUNT_NOT_DERIVED: frozenset[str] = frozenset(tuner.name for tuner in TUNERS if tuner.redundant is None)


# The peft release this catalogue was reviewed against, tuner by tuner (constraints.txt pins it for
# development and CI). A later peft may bring tuners no one has looked at: they are refused, never
# registered unchecked.
REVIEWED_PEFT_VERSION = "0.21.2"


def tuner_method_name(peft_type: PeftType) -> str:
    """The method name a peft tuner has or would have here: ``PeftType.LOHA`` -> ``peft:loha``."""
    return "peft:" + peft_type.value.lower().replace("_", "-")


def unreviewed_tuners() -> frozenset[str]:
    """Method names of the installed peft's tuners that this catalogue neither offers nor refuses."""
    known = {tuner.name for tuner in TUNERS} | set(REFUSED_TUNERS) | set(UNREGISTERED_TUNERS)
    return frozenset(tuner_method_name(peft_type) for peft_type in PeftType) - known


def unavailable_reason(name: str) -> str | None:
    """Why the method ``name`` (``peft:prefix-tuning``) is not offered, or None if that is not known."""
    if name in unreviewed_tuners():
        return (f"the installed peft {peft.__version__} has this tuner, but the catalogue was reviewed on peft "
                f"{REVIEWED_PEFT_VERSION}, which did not; it is offered once its count formula and contract are "
                f"checked (methods/peft_tuners.py), or install peft=={REVIEWED_PEFT_VERSION}")
    return REFUSED_TUNERS.get(name) or UNREGISTERED_TUNERS.get(name)


def refuse_unavailable(name: str) -> None:
    """A resolver of the method registry (:meth:`bench.registry.Registry.add_resolver`): asking for a
    peft tuner that does not apply says why instead of only "unknown"; other names are left alone."""
    reason = unavailable_reason(name)
    if reason:
        raise UnknownNameError(f"The method {name!r} is not offered: {reason}.")


# ----------------------------------------------------------------------------- catalogue configs and methods
def _option_type(tuner: Tuner, name: str, annotation: Any) -> Any | None:
    """The option type of a peft config field: int, float, bool, a choice of strings, or one of int and
    float or None; None when the field is none of these (it is then not an option)."""
    if name in tuner.option_types:
        return tuner.option_types[name]
    if annotation in (int, float, bool):
        return annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal and all(isinstance(a, str) for a in args):
        return annotation
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (member,) = [a for a in args if a is not type(None)]
        return member | None if member in (int, float) else None
    return None


def _is_number(annotation: Any) -> bool:
    return bool({int, float} & {annotation, *get_args(annotation)})


def catalogue_options(tuner: Tuner) -> dict[str, tuple[Any, Any]]:
    """The options of ``tuner``: each simple-typed field of its peft config, as ``name -> (type,
    peft's default)``, in peft's order; fields in :data:`NOT_OPTIONS` or the tuner's ``excluded``, and
    numbers without a declared range, are left to peft's default."""
    config_class = tuner.peft_config_class
    hints = typing.get_type_hints(config_class)
    own = [f for f in dataclasses.fields(config_class) if f.name not in {g.name for g in dataclasses.fields(peft.PeftConfig)}]
    options = {}
    for f in own:
        kind = _option_type(tuner, f.name, hints[f.name])
        if f.name in NOT_OPTIONS or f.name in tuner.excluded or kind is None:
            continue
        if _is_number(kind) and _limit(tuner, f.name) is None:
            continue
        options[f.name] = (kind, field_default(f))
    return options


def _limit(tuner: Tuner, name: str) -> Range | None:
    return tuner.limits.get(name) or COMMON_LIMITS.get(name)


def _config_class(tuner: Tuner, options: dict[str, tuple[Any, Any]]) -> type[MethodConfig]:
    """``lr``, ``weight_decay`` and ``groups`` as for lora, then the tuner's ``options`` with peft's defaults."""
    peft_source = f"official code: huggingface/peft {PEFT_VERSION} {tuner.peft_config_class.__name__} default"
    fields = [
        ("lr", float, dataclasses.field(default=1e-3)),
        ("weight_decay", float, dataclasses.field(default=0.0)),
        ("groups", tuple[ParameterGroup, ...], dataclasses.field(default=("fusion",))),
        *[(name, kind, dataclasses.field(default=default)) for name, (kind, default) in options.items()],
    ]
    layers = "LayerNorm" if tuner.layer is nn.LayerNorm else "Linear"
    sources = {
        "lr": WEIGHT_SUBSET_LR_SOURCE,
        "weight_decay": ADAPTER_WEIGHT_DECAY_SOURCE,
        "groups": "ours: the fusion layers, the targets of the lora default and of SDPT's LoRA baseline",
        **{name: peft_source for name in options},
    }
    limits = {name: _limit(tuner, name) for name in options if _is_number(options[name][0])}
    stem = "Peft" + "".join(part.title() for part in tuner.slug.split("-"))
    config_class = dataclasses.make_dataclass(f"{stem}Config", fields, bases=(MethodConfig,), frozen=True,
                                              namespace={"sources": sources, "limits": limits})
    config_class.__module__ = __name__
    config_class.__doc__ = (f"Config of {tuner.name}: ``groups``, the parameter groups whose {layers} layers it adapts, "
                            f"then the options of peft's {tuner.peft_config_class.__name__} under their peft names.")
    return config_class


class PeftCatalogueMethod(Method):
    """A tuner of the catalogue on the layers of chosen parameter groups; subclasses set :attr:`tuner` and
    :attr:`options` (the names of its config's fields that go to peft)."""

    tuner: ClassVar[Tuner]
    options: ClassVar[tuple[str, ...]]

    def targets(self, model: DetectorBase) -> dict[str, nn.Module]:
        return target_layers(model, self.config.groups, self.tuner.layer)

    def peft_config(self, targets: list[str]) -> peft.PeftConfig:
        """peft's config for ``targets``: this config's options under their peft names, peft's defaults
        for the rest."""
        options = {name: getattr(self.config, name) for name in self.options}
        return self.tuner.peft_config_class(target_modules=targets, **options)

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        targets = list(self.targets(model))
        return inject(model, self.peft_config(targets), targets)

    def expected_trainable(self, model: DetectorBase) -> int:
        """The tuner's per-layer formula over the targeted layers plus what it shares between them."""
        targets = self.targets(model)
        config = self.peft_config(list(targets))
        return sum(self.tuner.per_layer(config, layer) for layer in targets.values()) + self.tuner.shared(config, len(targets))

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The allocation less the tuner's redundant directions per layer (:attr:`Tuner.redundant`); the
        allocation, an upper bound, for a tuner without a derivation (:data:`EFFECTIVE_COUNT_NOT_DERIVED`)."""
        if self.tuner.redundant is None:
            return self.expected_trainable(model)
        targets = self.targets(model)
        config = self.peft_config(list(targets))
        return self.expected_trainable(model) - sum(self.tuner.redundant(config, layer) for layer in targets.values())


def _register(tuner: Tuner) -> type[PeftCatalogueMethod]:
    """Make and register the method class of ``tuner``, named at module level so that it pickles."""
    options = catalogue_options(tuner)
    config_class = _config_class(tuner, options)
    method_class = type(config_class.__name__[: -len("Config")], (PeftCatalogueMethod,), {
        "tuner": tuner, "options": tuple(options), "identity_at_init": tuner.identity_at_init, "__module__": __name__,
        "__doc__": f"{tuner.description} ({tuner.peft_config_class.__name__}).",
    })
    module = sys.modules[__name__]
    setattr(module, config_class.__name__, config_class)
    setattr(module, method_class.__name__, method_class)
    return register_method(tuner.name, config_class, f"{tuner.description} (default: fusion)", family=tuner.family)(method_class)


CATALOGUE: dict[str, type[PeftCatalogueMethod]] = {tuner.name: _register(tuner) for tuner in TUNERS if tuner.available}
"""The registered catalogue methods by name (tuners the installed peft lacks are left out)."""

METHODS.add_resolver(refuse_unavailable)
