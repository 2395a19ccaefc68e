"""LoRA, DoRA and IA3 from the ``peft`` library, on the Linear layers of chosen parameter groups.

Targets are chosen by the detector's parameter groups (``model.parameter_groups()``): every
``nn.Linear`` whose weight belongs to one of the configured groups is handed to peft by its exact
module name, and ``peft.inject_adapter_in_model`` wraps it in place. No layer is written by hand.

Defaults (each config's ``sources``): ``groups = ("fusion",)`` and rank 16 follow the SDPT authors'
LoRA baseline (``use_lora_cross`` in wuyongjianCODE/SDPT ``maskrcnn_benchmark/utils/fuse_helper.py``:
loralib r=16 on the six projections of every image-text fusion layer); ``alpha = rank`` (scaling 1) is
the LoRA paper's choice (Hu et al. 2022, §4.1: alpha set to the first r tried), while SDPT's loralib
default alpha 1 (scaling 1/16) is the preset ``lora@sdpt``; dropout 0 is loralib's default; lr 1e-3
(ten times full fine-tuning's) and weight decay 0 are ours. IA3 uses the same groups, lr and decay.

What peft does to names: a wrapped Linear's own tensors move from ``x.weight`` to
``x.base_layer.weight`` and the adapter's tensors appear as ``x.lora_A.<adapter>.weight`` (LoRA),
``x.lora_magnitude_vector.<adapter>.weight`` (DoRA) or ``x.ia3_l.<adapter>`` (IA3). Every adapter
here is named :data:`ADAPTER_NAME`, so one path component marks a method tensor, as slot names do
for the model's own extension points. Peft's injection also freezes every non-adapter parameter of
the model; :func:`inject` undoes that, so ``install`` composes with other methods (``sdpt+lora``).

peft has no bottleneck ("Houlsby") adapter tuner (huggingface/peft#244 is open, #2657 was closed),
so there is no ``adapter`` method here: LoRA is the parallel adapter that peft offers, and a
sequential bottleneck adapter would have to be hand-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import peft
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from bench.errors import BenchError
from bench.models.base import PARAMETER_GROUPS, PEFT_ADAPTER_NAME, DetectorBase
from bench.options import AT_LEAST_ONE, POSITIVE, Range
from bench.tuning.base import Method, MethodConfig, register_method, trainable_by_names
from methods.simple import WEIGHT_SUBSET_LR_SOURCE

# bench.models.base.PARAMETER_GROUPS as a type, so that a config with another group name is refused
# when it is built (a test keeps the two equal).
ParameterGroup = Literal["vision_backbone", "neck", "text_encoder", "fusion", "head"]

# The name of every adapter these methods inject; a path component that marks peft's tensors.
ADAPTER_NAME = PEFT_ADAPTER_NAME

SDPT_LORA = "wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py"
ADAPTER_WEIGHT_DECAY_SOURCE = ("ours: decay would pull DoRA's magnitudes and IA3's scales toward 0, away from the "
                               "identity they start at; LoRA shares the setting")


# ----------------------------------------------------------------------------- target selection
def _without_wrapper(path: str) -> str:
    return path[: -len(".base_layer")] if path.endswith(".base_layer") else path


def target_linears(model: DetectorBase, groups: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers whose weight is in one of ``groups``, by module name, in model order.

    Works before and after injection: a wrapped layer is found through its ``base_layer`` under its
    original name, and the adapters' own small Linear layers (``lora_A`` ...) are never targets.
    """
    bad = [g for g in groups if g not in PARAMETER_GROUPS]
    if not groups or bad:
        raise BenchError(f"peft target groups must be a non-empty subset of {PARAMETER_GROUPS}; got {groups!r}.")
    modules = dict(model.named_modules())
    adapter_prefixes = tuple(f"{name}." for name, module in modules.items() if isinstance(module, BaseTunerLayer))
    all_groups = model.parameter_groups()
    chosen: dict[str, nn.Linear] = {}
    for group in groups:
        for name in all_groups[group]:
            if not name.endswith(".weight"):
                continue
            path = name[: -len(".weight")]
            if path.startswith(adapter_prefixes) and not path.endswith(".base_layer"):
                continue  # a tensor of an adapter installed earlier
            path = _without_wrapper(path)
            module = modules[path]
            if isinstance(module, BaseTunerLayer):
                module = module.get_base_layer()
            if isinstance(module, nn.Linear):
                chosen[path] = module
    if not chosen:
        raise BenchError(f"The parameter groups {groups!r} of this model hold no nn.Linear layer for peft to adapt; choose others.")
    return chosen


def inject(model: DetectorBase, config: peft.PeftConfig, targets: list[str]) -> dict[str, nn.Parameter]:
    """Let peft wrap ``targets`` (exact module names) and mark only the new adapter tensors trainable.

    ``requires_grad`` of every parameter that existed before is restored afterwards (peft freezes all
    non-adapter parameters, which would undo what a method installed before this one marked).
    """
    before = {id(p): p.requires_grad for p in model.parameters()}
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise BenchError("This model already holds peft adapters; apply a peft method to a fresh base model.")
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
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


def _unwrapped(linear: nn.Module) -> nn.Module:
    """The Linear itself, whether or not peft has wrapped it."""
    return linear.get_base_layer() if isinstance(linear, BaseTunerLayer) else linear


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


@register_method("lora", LoraMethodConfig, "LoRA (peft) on the Linear layers of chosen parameter groups (default: fusion)")
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


@register_method("dora", LoraMethodConfig, "DoRA (peft LoRA with use_dora): LoRA direction plus a learned per-output magnitude")
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


@register_method("ia3", Ia3MethodConfig, "IA3 (peft): learned scaling vectors on the Linear layers of chosen parameter groups")
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
