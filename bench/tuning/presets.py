"""Presets: named configurations of registered methods, written ``method@preset``.

A preset is a config, not a code path: ``sdpt-head@official`` is the method ``sdpt-head`` built with
the options of SDPT's released command, and runs exactly the code that ``--methods sdpt-head
--method-set sdpt-head.num_tokens=700 ...`` would. Presets exist because a sweep names each method
once: ``--methods vpt,vpt@shallow,lora,lora@sdpt`` compares two configurations of one method side by
side, each in its own leaderboard row, and a published setting keeps a stable name even if the
method's defaults change later.

Each preset carries a description and a one-line source in the form of ``MethodConfig.sources``
(``"paper: ..."``, ``"official code: ..."`` or ``"ours: ..."``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from bench.errors import UnknownNameError
from bench.tuning.base import METHODS

SEPARATOR = "@"


@dataclass(frozen=True)
class Preset:
    """Options of the registered method ``method`` under the name ``name``."""

    method: str
    name: str
    options: Mapping[str, Any]
    description: str
    source: str

    @property
    def spec(self) -> str:
        """How the preset is written on the command line, e.g. ``sdpt-head@official``."""
        return f"{self.method}{SEPARATOR}{self.name}"


PRESETS: dict[str, Preset] = {}


def register_preset(method: str, name: str, options: Mapping[str, Any], description: str, source: str) -> Preset:
    """Add a preset; its options are checked when it is built (``build_method``), like any options."""
    preset = Preset(method, name, MappingProxyType(dict(options)), description, source)
    if SEPARATOR in method or SEPARATOR in name or not name:
        raise ValueError(f"A preset needs a method and a non-empty name without {SEPARATOR!r}; got {preset.spec!r}.")
    if preset.spec in PRESETS:
        raise ValueError(f"The preset {preset.spec!r} is registered twice; names must be unique.")
    PRESETS[preset.spec] = preset
    return preset


def presets_of(method: str) -> list[Preset]:
    """The presets of ``method``, sorted by name."""
    return sorted((p for p in PRESETS.values() if p.method == method), key=lambda p: p.name)


def find_preset(spec: str) -> Preset:
    """The preset written ``method@name``; an unknown one is answered with the method's presets."""
    method, _, name = spec.partition(SEPARATOR)
    METHODS.get(method)  # an unknown method gets the registry's message
    if spec in PRESETS:
        return PRESETS[spec]
    available = presets_of(method)
    if not available:
        others = ", ".join(p.spec for p in sorted(PRESETS.values(), key=lambda p: p.spec))
        raise UnknownNameError(f"The method {method!r} has no presets (asked for {spec!r}). Presets: {others}.")
    names = [p.name for p in available]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {method}{SEPARATOR}{close[0]}?" if close else ""
    raise UnknownNameError(f"Unknown preset {name!r} of the method {method!r}.{hint} Its presets: {', '.join(names)}.")


def split_preset(spec: str) -> tuple[str, dict[str, Any]]:
    """``"sdpt-head@official"`` -> ``("sdpt-head", {the preset's options})``; a plain method name ``"sdpt"``
    -> ``("sdpt", {})``. The caller keeps ``spec`` itself as the run's label and merges options given
    on the command line over the returned ones."""
    if SEPARATOR not in spec:
        return spec, {}
    preset = find_preset(spec)
    return preset.method, dict(preset.options)


# ----------------------------------------------------------------------------- the presets
register_preset(
    "sdpt-head", "official",
    {"num_tokens": 700, "lr": 1e-5, "weight_decay": 0.01, "layers": None, "shared": False, "init": "uniform",
     "text_prompt_visible": False},
    "SDPT's released COCO command: K = 700 tokens in every fusion layer plus the trainable DyHead, lr 1e-5, "
    "weight decay 0.01 (its batch-1, 2,000-step schedule is --protocol sdpt-coco)",
    "official code: wuyongjianCODE/SDPT README (MODEL.PROMPT.NUM_TOKENS 700, SOLVER.BASE_LR 1e-5) and "
    "configs/pretrain/glip_Swin_L.yaml (SOLVER.WEIGHT_DECAY 0.01)",
)
register_preset(
    "lora", "sdpt",
    {"groups": ("fusion",), "rank": 16, "alpha": 1.0, "dropout": 0.0},
    "SDPT's LoRA baseline: rank 16 on the six projections of every fusion layer with loralib's default "
    "alpha 1, i.e. scaling 1/16 (the lora default is alpha = rank, scaling 1)",
    "official code: wuyongjianCODE/SDPT maskrcnn_benchmark/utils/fuse_helper.py (use_lora_cross: "
    "lora.Linear(..., r=16) without lora_alpha) and microsoft/LoRA loralib/layers.py (lora_alpha=1, scaling alpha / r)",
)
register_preset(
    "vpt", "shallow",
    {"mode": "shallow"},
    "VPT-shallow: one set of P prompt tokens in the first prompted Swin block only",
    "paper: VPT (Jia et al., ECCV 2022) §3.2, VPT-Shallow (prompts in the first layer only)",
)
register_preset(
    "vpt", "per-stage",
    {"mode": "per-stage"},
    "one set of P prompt tokens per Swin stage, shared by the blocks of that stage",
    "ours: between VPT-shallow and VPT-deep in parameters; every block attends to its stage's prompts",
)
register_preset(
    "adapter", "adaptformer",
    {"mode": "parallel", "positions": ("feed_forward",), "reduction_factor": 12, "activation": "relu", "scale": 0.1},
    "AdaptFormer: a ReLU bottleneck beside every feed-forward layer, scaled by s = 0.1, 64 wide on 768 channels",
    "paper: AdaptFormer (Chen et al., NeurIPS 2022) sec. 3.2, Eq. 3 (parallel, ReLU, scale s = 0.1) and sec. 4.1 "
    "(bottleneck 64 for ViT-B's 768 channels: reduction factor 12)",
)
