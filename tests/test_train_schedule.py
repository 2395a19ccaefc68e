"""Learning rates: the schedule on hand-computed cases, and GLIP's AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models import MODELS
from bench.train.optim import LearningRateSchedule, build_optimizer, parameter_groups
from bench.train.protocol import Protocol
from bench.tuning.base import build_method
from tests.run_support import MODEL

TOTAL = 100


def schedule(total: int = TOTAL, initial=(1.0, 0.01), **protocol) -> LearningRateSchedule:
    """A schedule over one AdamW group per entry of ``initial`` (their ``initial_lr``)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "initial_lr": lr} for lr in initial]
    return LearningRateSchedule(torch.optim.AdamW(groups), Protocol(**protocol), total)


def lrs(s: LearningRateSchedule, step: int) -> list[float]:
    s.step(step)
    return [group["lr"] for group in s.optimizer.param_groups]


# ------------------------------------------------------------------------------------- warm-up
def test_warm_up_ramps_linearly_from_the_warm_up_factor():
    s = schedule(schedule="constant", warmup_steps=10, warmup_factor=0.1, min_lr=0.0)
    assert lrs(s, 0) == pytest.approx([0.1, 0.001])
    assert lrs(s, 5) == pytest.approx([0.55, 0.0055])  # 0.1 * 0.5 + 0.5
    assert lrs(s, 9) == pytest.approx([0.91, 0.0091])
    assert lrs(s, 10) == pytest.approx([1.0, 0.01])
    assert lrs(s, 99) == pytest.approx([1.0, 0.01])


def test_warm_up_may_start_below_min_lr_but_the_schedule_never_ends_there():
    s = schedule(schedule="constant", warmup_steps=10, warmup_factor=0.1, min_lr=0.5, initial=(1.0,))
    assert lrs(s, 0) == pytest.approx([0.1])
    assert lrs(s, 10) == pytest.approx([1.0])


# ----------------------------------------------------------------------------------- step decay
def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    s = schedule(schedule="step", milestones=(0.5, 0.8), gamma=0.1, min_lr=1e-6, initial=(1.0, 1e-4, 1e-7))
    assert lrs(s, 0) == pytest.approx([1.0, 1e-4, 1e-7])
    assert lrs(s, 49) == pytest.approx([1.0, 1e-4, 1e-7])
    assert lrs(s, 50) == pytest.approx([0.1, 1e-5, 1e-7])
    assert lrs(s, 79) == pytest.approx([0.1, 1e-5, 1e-7])
    # 1e-4 * 0.01 = 1e-6 is the floor; a group that starts below the floor is left where it is
    assert lrs(s, 80) == pytest.approx([0.01, 1e-6, 1e-7])
    assert lrs(s, 99) == pytest.approx([0.01, 1e-6, 1e-7])


# --------------------------------------------------------------------------------------- cosine
def test_cosine_runs_from_the_initial_lr_to_min_lr():
    s = schedule(schedule="cosine", min_lr=0.0)
    assert lrs(s, 0) == pytest.approx([1.0, 0.01])
    assert lrs(s, 25) == pytest.approx([0.5 * (1 + math.cos(math.pi / 4)), 0.005 * (1 + math.cos(math.pi / 4))])
    assert lrs(s, 50) == pytest.approx([0.5, 0.005])
    assert lrs(s, 100) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert lrs(s, 150) == pytest.approx([0.0, 0.0], abs=1e-12)  # past the end it stays at the bottom


def test_cosine_with_a_floor_and_warm_up():
    s = schedule(schedule="cosine", min_lr=0.1, warmup_steps=10, warmup_factor=0.1, initial=(1.0,))
    assert lrs(s, 0) == pytest.approx([0.1 + 0.9 * 0.1])  # warm-up factor on the cosine's value 1
    assert lrs(s, 50) == pytest.approx([0.55])
    assert lrs(s, 100) == pytest.approx([0.1])


# ------------------------------------------------------------------------- plateau and stopping
def test_plateau_reduces_after_step_patience_plus_one_bad_evaluations_and_stops_after_terminate_patience():
    s = schedule(schedule="plateau", step_patience=2, gamma=0.1, terminate_patience=5, min_lr=0.0)
    assert s.observe(0.5) is True  # the first score is a best
    for bad in (0.4, 0.5):  # equal is not better
        assert s.observe(bad) is False
        assert lrs(s, 10) == pytest.approx([1.0, 0.01])
    assert s.observe(float("nan")) is False  # third bad evaluation: x gamma
    assert lrs(s, 10) == pytest.approx([0.1, 0.001])
    assert not s.should_stop()
    s.observe(0.1)
    assert not s.should_stop()
    s.observe(0.2)  # fifth evaluation without improvement
    assert s.should_stop()
    assert lrs(s, 10) == pytest.approx([0.1, 0.001])


def test_plateau_keeps_its_reductions_after_an_improvement_and_counts_again_from_zero():
    s = schedule(schedule="plateau", step_patience=0, gamma=0.5, terminate_patience=None, min_lr=0.0)
    s.observe(0.3)
    s.observe(0.2)  # patience 0: every bad evaluation halves
    s.observe(0.2)
    assert lrs(s, 0) == pytest.approx([0.25, 0.0025])
    assert s.observe(0.9) is True and s.evals_without_improvement == 0
    assert lrs(s, 0) == pytest.approx([0.25, 0.0025])
    for _ in range(50):
        s.observe(0.0)
    assert not s.should_stop()  # terminate_patience None: never


def test_plateau_never_goes_below_min_lr():
    s = schedule(schedule="plateau", step_patience=0, gamma=0.01, terminate_patience=None, min_lr=1e-3, initial=(1.0,))
    for score in (1.0, 0.0, 0.0, 0.0):
        s.observe(score)
    assert lrs(s, 0) == pytest.approx([1e-3])


def test_schedule_state_round_trips():
    s = schedule(schedule="plateau", step_patience=1, gamma=0.1, terminate_patience=3)
    for score in (0.5, 0.1, 0.1):
        s.observe(score)
    restored = schedule(schedule="plateau", step_patience=1, gamma=0.1, terminate_patience=3)
    restored.load_state_dict(s.state_dict())
    assert lrs(restored, 5) == lrs(s, 5) == pytest.approx([0.1, 0.001])
    assert restored.observe(0.2) is False and restored.should_stop()


# ----------------------------------------------------------------------------- parameter groups
@pytest.fixture(scope="module")
def full_with_coop():
    """glip-nano with full fine-tuning plus CoOp's context vectors installed inside the text encoder."""
    model = MODELS.get(MODEL)()
    trainable = build_method("full").apply(model)
    coop = build_method("coop", {"context_tokens": 4})
    trainable |= coop.install(model)
    prefix = next(f"{name}." for name, module in model.named_modules() if module is model.text_encoder())
    return model, trainable, coop, prefix


def group_of(groups: list[dict], parameter: torch.nn.Parameter) -> dict:
    [group] = [g for g in groups if any(p is parameter for p in g["params"])]
    return group


def test_text_encoder_base_params_get_the_text_lr_biases_the_factor_and_method_tensors_the_method_lr(full_with_coop):
    model, trainable, coop, prefix = full_with_coop
    protocol = Protocol(bias_lr_factor=2.0)
    config = build_method("full", {"text_encoder_lr": 1e-5}).config
    lr, decay = config.lr, config.weight_decay
    groups = parameter_groups(model, trainable, config, protocol)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert len(groups) == 4
    base = set(model.base_parameter_names())
    context = [n for n in trainable if n not in base]
    assert context and all(n.startswith(prefix) for n in context)  # CoOp's vectors live in the text encoder
    seen = set()
    for name, parameter in trainable.items():
        group = group_of(groups, parameter)
        in_text_base = name in base and name.startswith(prefix)
        is_bias = "bias" in name  # GLIP's rule (maskrcnn_benchmark/solver/build.py)
        expected_lr = (1e-5 if in_text_base else lr) * (2.0 if is_bias else 1.0)
        assert group["lr"] == pytest.approx(expected_lr), name
        assert group["initial_lr"] == group["lr"]
        assert group["weight_decay"] == (0.0 if is_bias else decay), name
        seen.add((in_text_base, is_bias))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}
    for name in context:
        assert group_of(groups, trainable[name])["lr"] == pytest.approx(lr)


def test_without_a_text_encoder_lr_every_tensor_takes_the_method_lr(full_with_coop):
    model, trainable, coop, _ = full_with_coop
    groups = parameter_groups(model, trainable, coop.config, Protocol(bias_lr_factor=3.0))
    assert sorted(g["lr"] for g in groups) == pytest.approx([coop.config.lr, 3.0 * coop.config.lr])
    config = build_method("full", {"text_encoder_lr": None}).config
    groups = parameter_groups(model, trainable, config, Protocol(bias_lr_factor=3.0))
    assert sorted(g["lr"] for g in groups) == pytest.approx([config.lr, 3.0 * config.lr])


def test_nothing_to_train_means_no_optimizer():
    model = MODELS.get(MODEL)()
    method = build_method("zero-shot")
    assert build_optimizer(model, method.apply(model), method.config, Protocol()) is None
