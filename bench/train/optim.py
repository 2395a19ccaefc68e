"""AdamW with GLIP's parameter groups, and the learning-rate schedule of a :class:`Protocol`.

The schedule is a small class rather than a chain of ``torch.optim.lr_scheduler`` objects because
GLIP's schedule mixes a step-indexed warm-up with a plateau rule driven by validation scores, and
the whole state (including the plateau's patience counter) must go into checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.models.base import DetectorBase
from bench.train.protocol import Protocol
from bench.tuning.base import MethodConfig


def _module_prefix(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise ValueError("The text encoder is not a submodule of the model.")


def is_bias(name: str) -> bool:
    """GLIP's rule for the bias learning-rate factor and zero weight decay: ``"bias" in key``
    (microsoft/GLIP ``maskrcnn_benchmark/solver/build.py``, ``make_optimizer``).

    Besides every ``*.bias``, the substring matches GLIP's head parameters ``bias_lang`` and ``bias0``
    (trained by the linear probe, ``sdpt-head`` and full fine-tuning) and Swin's
    ``relative_position_bias_table`` (full fine-tuning), as in GLIP's own fine-tuning;
    ``tests/test_train_bias_rule.py`` lists what it matches per method and backend.
    """
    return "bias" in name


def parameter_groups(
    model: DetectorBase, trainable: dict[str, nn.Parameter], method: MethodConfig, protocol: Protocol
) -> list[dict[str, Any]]:
    """AdamW groups: (text-encoder base parameters or not) x (bias or not), empty groups dropped.

    Base parameters of the text encoder take the method's ``text_encoder_lr`` when its config declares
    one (full fine-tuning: GLIP's ``LANG_LR``); a method's own tensors installed inside the text
    encoder (context vectors, adapters) keep the method's lr. Names that :func:`is_bias` accepts get
    ``bias_lr_factor`` times the lr and no weight decay. Each group carries ``initial_lr``, from which
    the schedule scales.
    """
    text_lr = getattr(method, "text_encoder_lr", None)
    base_names = set(model.base_parameter_names())
    text_prefix = _module_prefix(model, model.text_encoder())
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in trainable.items():
        in_text = text_lr is not None and name in base_names and name.startswith(text_prefix)
        groups.setdefault((in_text, is_bias(name)), []).append(parameter)
    out = []
    for (in_text, bias), params in sorted(groups.items()):
        lr = text_lr if in_text else method.lr
        if bias:
            lr *= protocol.bias_lr_factor
        out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": 0.0 if bias else method.weight_decay})
    return out


def build_optimizer(
    model: DetectorBase, trainable: dict[str, nn.Parameter], method: MethodConfig, protocol: Protocol
) -> torch.optim.AdamW | None:
    """AdamW over the method's trainable parameters, or None when there are none (zero-shot)."""
    if not trainable:
        return None
    return torch.optim.AdamW(parameter_groups(model, trainable, method, protocol))


class LearningRateSchedule:
    """Sets every group's lr to ``initial_lr * factor(step)`` (see :class:`Protocol` for the rules).

    ``step(step)`` is called before each optimiser step; ``observe(score)`` after each validation,
    which drives the plateau rule. ``state_dict``/``load_state_dict`` make it resumable.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, protocol: Protocol, total_steps: int) -> None:
        self.optimizer = optimizer
        self.protocol = protocol
        self.total_steps = max(total_steps, 1)
        self.plateau_factor = 1.0
        self.best: float | None = None
        self.evals_without_improvement = 0

    def factor(self, step: int) -> float:
        """The decay of the schedule at ``step``, times the warm-up ramp while it lasts."""
        p = self.protocol
        if p.schedule == "step":
            decay = p.gamma ** sum(step >= m * self.total_steps for m in p.milestones)
        elif p.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        elif p.schedule == "plateau":
            decay = self.plateau_factor
        else:
            decay = 1.0
        if step < p.warmup_steps:
            alpha = step / p.warmup_steps
            decay *= p.warmup_factor * (1 - alpha) + alpha
        return decay

    def step(self, step: int) -> None:
        """Set the learning rates for optimiser step ``step`` (0-based).

        Cosine decays from ``initial_lr`` to ``min_lr``; the other schedules never go below
        ``min_lr`` once warm-up is over (as a plateau schedule's ``min_lr`` does).
        """
        factor = self.factor(step)
        for group in self.optimizer.param_groups:
            initial = group["initial_lr"]
            floor = min(self.protocol.min_lr, initial)
            if self.protocol.schedule == "cosine":
                group["lr"] = floor + (initial - floor) * factor
            elif step < self.protocol.warmup_steps:
                group["lr"] = initial * factor
            else:
                group["lr"] = max(initial * factor, floor)

    def observe(self, score: float) -> bool:
        """Record a validation score; returns whether it is a new best (NaN never is)."""
        improved = not math.isnan(score) and (self.best is None or score > self.best)
        if improved:
            self.best, self.evals_without_improvement = score, 0
            return True
        self.evals_without_improvement += 1
        if self.protocol.schedule == "plateau" and self.evals_without_improvement % (self.protocol.step_patience + 1) == 0:
            self.plateau_factor *= self.protocol.gamma
        return False

    def should_stop(self) -> bool:
        patience = self.protocol.terminate_patience
        return patience is not None and self.evals_without_improvement >= patience

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_factor": self.plateau_factor, "best": self.best, "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor = float(state["plateau_factor"])
        self.best = state["best"]
        self.evals_without_improvement = int(state["evals_without_improvement"])
