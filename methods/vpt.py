"""VPT: visual prompt tokens in the Swin backbone (Jia et al., "Visual Prompt Tuning", ECCV 2022).

Each prompted Swin block gets ``P`` learnable tokens of its own channel width through its
``extra_tokens`` slot (:mod:`bench.models.glip.swin`): the block normalises them with its ``norm1``
and they join the attention of every window as ``P`` extra keys and values (no position bias, never
masked). Only image tokens are queries, so the prompts never reach patch merging and every stage map
keeps its shape; any input size works, including sizes that are not multiples of the window or
square (the official SDPT repo's VPT, ``vpt_only > 0`` in wuyongjianCODE/SDPT, runs only at 800x800
and slices away image tokens instead of the prompts).

Modes:

* ``deep`` (default): an independent set of ``P`` tokens for every prompted block, as in the official
  VPT Swin code (``KMnP/vpt``, ``src/models/vit_prompt/swin_transformer.py``: one prompt set per block,
  ``[P, C_stage]``). Trainable: ``P * sum(C_block)`` over the prompted blocks.
* ``shallow``: VPT-shallow (VPT paper §3.2: prompts at the first layer only): one set of ``P``
  tokens in the first prompted block (the first block of the lowest prompted stage), none
  elsewhere. Trainable: ``P * C_first``, the official VPT-shallow Swin's count (``P * C_1`` with
  every stage prompted). One difference remains: official VPT-shallow prepends the prompts to the
  input sequence, so every later block also updates them (as queries, averaged over windows) and
  attends to them, and patch merging carries them on (repeated four times, in the official Swin
  code). Our slot gives prompts as keys and values of one block only, so here they act in the
  first block alone and reach later blocks only through the image tokens they changed.
* ``per-stage``: one set of ``P`` tokens per prompted stage, shared by all blocks of that stage:
  ours, between the two. The *same* tokens take part in every block's attention, entering once per
  stage (each block reads them through its own ``norm1`` and key/value projections), which is what
  official VPT-shallow's travelling prompts give within a stage, without their updates. Trainable:
  ``P * sum(C_stage)`` over the prompted stages.

Effective count, every mode: ``P * (C - 2)`` per prompt set. A prompt reaches the model only through
the LayerNorm (``norm1``) of each block that reads it, and a LayerNorm ignores two directions of its
input (:data:`bench.tuning.accounting.LAYER_NORM_INVARIANCES`).

Defaults and their sources (``VptConfig.sources``):

* ``num_tokens = 10``: ours. The VPT paper tunes the prompt length per task over
  {1, 5, 10, 50, 100, 200}; 10 is a small value of that grid (the SDPT repo's VPT uses 100).
* ``mode = "deep"``: VPT-deep, the variant the VPT paper reports as its best.
* ``init = "xavier"``: official VPT: ``U(-b, b)`` with ``b = sqrt(6 / (3 * patch^2 + C_1))``, the
  first stage's width ``C_1``, the same bound for every stage (Swin's patch is 4, so ``3 * 16 = 48``).
  ``"normal"``: N(0, 0.02^2), ours (the std of Swin's own weight init).
* ``lr = 1e-2``, ``weight_decay = 0.01``: ours, the AdamW setting of every prompt method here
  (:data:`methods.coop.PROMPT_LR_SOURCE`). VPT used SGD with rates from 0.05 to 50 chosen per task
  by grid search (``KMnP/vpt`` ``tune_vtab.py``); those do not carry over to AdamW.
* ``stages = None``: all stages (0-based indices as in ``VisionBlock.stage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase, VisionBlock
from bench.options import AT_LEAST_ONE, NON_NEGATIVE
from bench.tuning.accounting import LAYER_NORM_INVARIANCES
from bench.tuning.base import Method, MethodConfig, register_method, trainable_under
from methods.coop import PROMPT_LR_SOURCE, PROMPT_WEIGHT_DECAY_SOURCE

Mode = Literal["deep", "shallow", "per-stage"]
Init = Literal["xavier", "normal"]

# Fan-in of Swin's patch embedding (3 colour channels x a 4x4 patch), the "3 * patch^2" of VPT's
# init bound. GLIP-T and GLIP-L both use patch 4.
SWIN_PATCH_FAN_IN = 3 * 4 * 4
NORMAL_INIT_STD = 0.02


@dataclass(frozen=True)
class VptConfig(MethodConfig):
    lr: float = 1e-2
    weight_decay: float = 0.01
    num_tokens: int = 10
    mode: Mode = "deep"
    init: Init = "xavier"
    stages: tuple[int, ...] | None = None

    limits = {"num_tokens": AT_LEAST_ONE, "stages": NON_NEGATIVE}

    sources = {
        "lr": PROMPT_LR_SOURCE + "; VPT's SGD rates 0.05..50 (KMnP/vpt tune_vtab.py) do not transfer",
        "weight_decay": PROMPT_WEIGHT_DECAY_SOURCE + "; VPT searched 0..0.01 per task (KMnP/vpt tune_vtab.py)",
        "num_tokens": "ours: a small value of the prompt lengths the VPT paper searches per task (1 to 200)",
        "mode": "paper: VPT (Jia et al., ECCV 2022) §3.2, VPT-Deep, the variant it reports as its best",
        "init": "official code: KMnP/vpt src/models/vit_prompt/swin_transformer.py (uniform, bound "
                "sqrt(6 / (3 * patch^2 + embed_dim)))",
        "stages": "ours: every Swin stage, as the official Swin VPT-Deep prompts every block",
    }

    def __post_init__(self) -> None:
        """Besides each value's own check: an empty stage list (whether the stages exist depends on the
        backbone, so :meth:`Vpt._prompted_blocks` checks that when installing)."""
        super().__post_init__()
        if self.stages is not None and len(self.stages) == 0:
            self.refuse("stages", "a non-empty list of stage indices (integers >= 0), or null for every stage")


class PromptTokens(nn.Module):
    """``P`` learnable tokens of one width: ``x [B, L, C]`` -> ``[B, P, C]`` (the same for every image)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = nn.Parameter(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)


class SharedPromptTokens:
    """A later block's view of its stage's :class:`PromptTokens` (per-stage mode).

    Deliberately not an ``nn.Module``: the tokens are registered once, under the stage's first
    prompted block, so ``state_dict`` and ``named_parameters`` hold each shared tensor under one name.
    """

    def __init__(self, owner: PromptTokens) -> None:
        self.owner = owner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner(x)


def _init_tokens(config: VptConfig, channels: int, first_stage_channels: int, like: torch.Tensor) -> torch.Tensor:
    tokens = torch.empty(config.num_tokens, channels, device=like.device, dtype=like.dtype)
    if config.init == "xavier":
        bound = math.sqrt(6.0 / (SWIN_PATCH_FAN_IN + first_stage_channels))
        return nn.init.uniform_(tokens, -bound, bound)
    return nn.init.normal_(tokens, std=NORMAL_INIT_STD)


@register_method("vpt", VptConfig, "VPT: learnable prompt tokens as extra keys/values in Swin windows (deep, shallow or per-stage)",
                 family="image prompts")
class Vpt(Method):
    slots = ("extra_tokens",)
    identity_at_init = False  # the prompts join the attention softmax from the start

    def _prompted_blocks(self, model: DetectorBase) -> list[VisionBlock]:
        blocks = model.vision_blocks()
        if not blocks:
            raise BenchError("vpt needs a model with vision transformer blocks; this model's vision_blocks() is empty.")
        available = sorted({b.stage for b in blocks})
        wanted = available if self.config.stages is None else sorted(set(self.config.stages))
        missing = [s for s in wanted if s not in available]
        if missing:
            raise BenchError(f"vpt stages {missing} do not exist; this backbone has stages {available} (0-based).")
        chosen = [b for b in blocks if b.stage in wanted]
        return chosen[:1] if self.config.mode == "shallow" else chosen

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        first_stage_channels = model.vision_blocks()[0].channels
        installed: list[PromptTokens] = []
        stage_owner: dict[int, PromptTokens] = {}
        for block in self._prompted_blocks(model):
            if self.config.mode == "per-stage" and block.stage in stage_owner:
                block.module.extra_tokens = SharedPromptTokens(stage_owner[block.stage])
                continue
            like = next(block.module.parameters())
            prompts = PromptTokens(_init_tokens(self.config, block.channels, first_stage_channels, like))
            block.module.extra_tokens = prompts
            stage_owner[block.stage] = prompts
            installed.append(prompts)
        trainable: dict[str, nn.Parameter] = {}
        for prompts in installed:
            trainable.update(trainable_under(model, prompts))
        return trainable

    def expected_trainable(self, model: DetectorBase) -> int:
        blocks = self._prompted_blocks(model)
        if self.config.mode == "per-stage":
            widths = list({b.stage: b.channels for b in blocks}.values())
        else:  # deep: every prompted block; shallow: the one block _prompted_blocks keeps
            widths = [b.channels for b in blocks]
        return self.config.num_tokens * sum(widths)

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """``P * (C - 2)`` per prompt set: blocks read the prompts only through their LayerNorm."""
        blocks = self._prompted_blocks(model)
        sets = len({b.stage for b in blocks}) if self.config.mode == "per-stage" else len(blocks)
        return self.expected_trainable(model) - self.config.num_tokens * LAYER_NORM_INVARIANCES * sets
