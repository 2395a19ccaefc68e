"""Bottleneck adapters: Houlsby-style serial and AdaptFormer-style parallel, in the detector's adapter sites.

peft has no bottleneck-adapter tuner, so this method is written here, on the detector's declared
extension point (``adapter_sites()``, :class:`bench.models.base.AdapterSite`): the attention and
feed-forward sublayers of the transformer blocks of the chosen parameter groups. Each chosen site's
``output_adapter`` slot gets a small MLP ``up(act(down(x)))`` whose output is added to the
sublayer's output, before the block's residual and normalisation:

* ``serial`` (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, sec. 2.1
  and Fig. 2): ``x`` is the sublayer's output, i.e. ``h + up(act(down(h)))`` after both the attention
  projection and the feed-forward layer of every block;
* ``parallel`` (Chen et al., "AdaptFormer", NeurIPS 2022, sec. 3.2 and Eq. 3): ``x`` is the
  sublayer's input, i.e. ``MLP(x) + s * up(act(down(x)))`` beside the feed-forward layer, with a
  scale ``s`` (0.1 in the paper; the preset ``adapter@adaptformer``).

``up`` starts at zero (both papers' near-identity initialisation, made exact), so the tuned model
starts as the base model. The bottleneck is ``max(1, round(width / reduction_factor))`` wide, where
``width`` is the sublayer's output width.

Defaults (``AdapterConfig.sources``): serial, both positions, reduction factor 16 and the swish
(SiLU) activation are the Houlsby configuration of the adapters library (adapter-hub/adapters,
``HoulsbyConfig``: ``mh_adapter`` and ``output_adapter`` on, ``reduction_factor=16``,
``non_linearity="swish"``); the vision backbone and the text encoder are the detector's two transformer
encoders, where those papers adapt every layer (ours: the fusion layers are a third choice); lr 1e-3
and weight decay 0 as LoRA here (an adapter is a small set of new weights, as LoRA's are).

Count per site: ``in * b + b + b * out + out`` (``down`` and ``up`` with biases; ``in = out`` for a
serial adapter). Effective count: all of them with swish or GELU, which have no rescaling symmetry;
with ReLU each hidden unit's ``down`` row and bias can be scaled by ``c > 0`` and its ``up`` column by
``1 / c`` for the same function, so one direction per hidden unit acts on nothing (``b`` less per site).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import AdapterSite, DetectorBase
from bench.options import AT_LEAST_ONE, POSITIVE
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under
from methods.simple import WEIGHT_SUBSET_LR_SOURCE

Mode = Literal["serial", "parallel"]
Position = Literal["attention", "feed_forward"]
Activation = Literal["swish", "gelu", "relu"]
# The parameter groups that hold adapter sites on every backend (bench.models.base.AdapterSite).
AdapterGroup = Literal["vision_backbone", "text_encoder", "fusion"]

ACTIVATIONS = {"swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}
HOULSBY = "adapter-hub/adapters src/adapters/configuration/adapter_config.py, HoulsbyConfig"
ADAPTFORMER = "paper: AdaptFormer (Chen et al., NeurIPS 2022) sec. 3.2, Eq. 3 and sec. 4.1"


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """``mode``: serial (on the sublayer's output) or parallel (from its input); ``groups`` and
    ``positions``: which sites; ``reduction_factor``: output width over bottleneck width;
    ``activation`` between ``down`` and ``up``; ``scale``: the factor on the adapter's output."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    mode: Mode = "serial"
    groups: tuple[AdapterGroup, ...] = ("vision_backbone", "text_encoder")
    positions: tuple[Position, ...] = ("attention", "feed_forward")
    reduction_factor: int = 16
    activation: Activation = "swish"
    scale: float = 1.0

    limits = {"reduction_factor": AT_LEAST_ONE, "scale": POSITIVE}

    sources = {
        "lr": WEIGHT_SUBSET_LR_SOURCE,
        "weight_decay": "ours: as LoRA here; decay would pull the new weights toward 0 while they learn",
        "mode": f"paper: Houlsby et al. (ICML 2019) sec. 2.1, serial adapters; configuration as {HOULSBY}",
        "groups": "ours: the detector's two transformer encoders, every layer of which Houlsby et al. and AdaptFormer adapt",
        "positions": f"paper: Houlsby et al. (ICML 2019) Fig. 2, after the attention and the feed-forward layer ({HOULSBY}: "
                     "mh_adapter and output_adapter)",
        "reduction_factor": f"official code: {HOULSBY} (reduction_factor=16)",
        "activation": f"official code: {HOULSBY} (non_linearity='swish')",
        "scale": "paper: Houlsby et al. add the adapter's output unscaled (AdaptFormer's s = 0.1 is the preset adapter@adaptformer)",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        for option, allowed in (("groups", get_args(AdapterGroup)), ("positions", get_args(Position))):
            values = getattr(self, option)
            if not values or len(set(values)) != len(values):
                self.refuse(option, f"a non-empty list of distinct values of {', '.join(allowed)}")


class Bottleneck(nn.Module):
    """``output + scale * up(act(down(x)))``, ``x`` the sublayer's output (serial) or input (parallel);
    ``up`` is zero at init, so the sublayer computes what it computed before."""

    def __init__(self, in_width: int, out_width: int, hidden: int, activation: str, scale: float, serial: bool,
                 like: torch.Tensor) -> None:
        super().__init__()
        self.down = nn.Linear(in_width, hidden, device=like.device, dtype=like.dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, out_width, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale, self.serial = scale, serial

    def forward(self, output: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor:
        source = output if self.serial else sublayer_input
        return output + self.scale * self.up(self.act(self.down(source.to(self.down.weight.dtype)))).to(output.dtype)


@register_method("adapter", AdapterConfig, "bottleneck adapters (Houlsby serial / AdaptFormer parallel) in the "
                                           "attention and feed-forward sublayers of chosen groups", family="adapters")
class Adapter(Method):
    identity_at_init = True
    slots = ("output_adapter",)

    def sites(self, model: DetectorBase) -> list[AdapterSite]:
        """The model's adapter sites in the chosen groups and positions; a chosen group without any is refused."""
        declared = model.adapter_sites()
        chosen = [s for s in declared if s.group in self.config.groups and s.kind in self.config.positions]
        empty = [g for g in self.config.groups if not any(s.group == g and s.kind in self.config.positions for s in declared)]
        if empty:
            raise BenchError(f"adapter: the model declares no {' or '.join(self.config.positions)} adapter sites in the "
                             f"group(s) {', '.join(empty)}; choose --method-set adapter.groups from the groups that have "
                             f"them ({', '.join(sorted({s.group for s in declared}))}).")
        return chosen

    def hidden_width(self, site: AdapterSite) -> int:
        return max(1, round(site.output_width / self.config.reduction_factor))

    def in_width(self, site: AdapterSite) -> int:
        return site.output_width if self.config.mode == "serial" else site.input_width

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        trainable = {}
        for site in self.sites(model):
            site.exit.output_adapter = Bottleneck(
                self.in_width(site), site.output_width, self.hidden_width(site), self.config.activation,
                self.config.scale, self.config.mode == "serial", like=site.exit.weight)
            trainable.update(trainable_under(model, site.exit.output_adapter))
        return trainable

    def expected_trainable(self, model: DetectorBase) -> int:
        """``in * b + b + b * out + out`` per chosen site."""
        return sum((self.in_width(s) + 1) * self.hidden_width(s) + (self.hidden_width(s) + 1) * s.output_width
                   for s in self.sites(model))

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The allocation, less one direction per hidden unit with ReLU (module docstring)."""
        lost = sum(self.hidden_width(s) for s in self.sites(model)) if self.config.activation == "relu" else 0
        return self.expected_trainable(model) - lost
