"""Training protocols: GLIP's per-shot recipe, overrides, budget arithmetic and bad values."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from bench.errors import BenchError, UnknownNameError
from bench.train.protocol import PROTOCOLS, Protocol, resolve_protocol


@pytest.mark.parametrize("shots, copies", [("1", 8), ("3", 4), ("5", 2), ("10", 1), ("full", 1)])
def test_glip_odinw_repeats_small_splits_as_glip_does(shots, copies):
    assert resolve_protocol("glip-odinw", shots).copies == copies


def test_glip_odinw_full_data_is_more_impatient():
    full, one_shot = resolve_protocol("glip-odinw", "full"), resolve_protocol("glip-odinw", "1")
    assert (full.step_patience, full.terminate_patience) == (2, 4)
    assert (one_shot.step_patience, one_shot.terminate_patience) == (3, 8)
    assert full.per_shots == {} and one_shot.per_shots == {}  # applied, then dropped


def test_shot_counts_without_changes_keep_the_protocol():
    assert resolve_protocol("glip-odinw", "7") == dataclasses.replace(PROTOCOLS.get("glip-odinw"), per_shots={})


def test_overrides_win_over_per_shot_changes_and_lists_become_tuples():
    protocol = resolve_protocol("glip-odinw", "1", {"copies": 2, "milestones": [0.5, 0.9], "max_steps": 10})
    assert protocol.copies == 2 and protocol.milestones == (0.5, 0.9) and protocol.max_steps == 10


def test_an_unknown_override_lists_the_valid_fields():
    with pytest.raises(BenchError) as caught:
        resolve_protocol("shapes", "full", {"epoch": 3})
    message = str(caught.value)
    assert "['epoch']" in message and "epochs" in message and "max_steps" in message and "batch_size" in message
    assert "per_shots" not in message.split("valid fields:")[1]  # not a command-line field


@pytest.mark.parametrize("field", ["name", "per_shots"])
def test_identity_fields_are_not_overridable(field):
    with pytest.raises(BenchError, match="Unknown protocol field"):
        resolve_protocol("shapes", "full", {field: "x"})


def test_an_unknown_protocol_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'glip-odinw'"):
        resolve_protocol("glip-odnw", "full")


@pytest.mark.parametrize(
    "override, says",
    [
        ({"schedule": "linear"}, "unknown schedule"),
        ({"amp": "fp8"}, "unknown amp mode"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
        ({"max_steps": 0}, "max_steps must be at least 1"),
        ({"eval_every": 0}, "eval_every must be at least 1"),
        ({"batch_size": "four"}, "batch_size must be int"),
        ({"max_steps": "lots"}, "max_steps must be int or None"),
        ({"milestones": 0.5}, "milestones must be tuple"),
    ],
)
def test_bad_override_values_are_explained(override, says):
    with pytest.raises(BenchError, match=says):
        resolve_protocol("shapes", "full", override)


def test_good_override_values_of_every_kind_are_accepted():
    protocol = resolve_protocol("glip-odinw", "full", {"max_steps": None, "gamma": 1, "clip_grad_norm": None, "amp": "bf16"})
    assert protocol.max_steps is None and protocol.gamma == 1 and protocol.clip_grad_norm is None


# ---------------------------------------------------------------------------- budget arithmetic
def test_steps_per_epoch_rounds_up_over_copies_and_accumulation():
    protocol = Protocol(batch_size=4, grad_accumulation=1, copies=8, epochs=200)
    assert protocol.images_per_step == 4
    assert protocol.steps_per_epoch(10) == 20  # 10 images x 8 copies / 4
    assert protocol.steps_per_epoch(11) == 22  # 88 / 4
    assert protocol.total_steps(10) == 4000
    accumulating = dataclasses.replace(protocol, grad_accumulation=3)
    assert accumulating.images_per_step == 12
    assert accumulating.steps_per_epoch(10) == 7  # ceil(80 / 12)
    assert Protocol(batch_size=4).steps_per_epoch(1) == 1  # never zero steps


def test_max_steps_caps_the_budget_and_eval_interval_defaults_to_an_epoch():
    protocol = Protocol(batch_size=2, epochs=3, max_steps=10)
    assert protocol.total_steps(100) == 10
    assert protocol.total_steps(4) == 6  # 3 epochs of 2 steps, under the cap
    assert protocol.eval_interval(100) == 50
    assert dataclasses.replace(protocol, eval_every=7).eval_interval(100) == 7


def test_registered_shapes_protocol_budget():
    shapes = resolve_protocol("shapes", "full")
    assert shapes.total_steps(50) == 50 and shapes.eval_interval(50) == 25 and shapes.warmup_steps < shapes.max_steps


def test_determinism_is_a_protocol_switch_that_turns_on_deterministic_kernels(monkeypatch):
    from bench.train.loop import use_deterministic_kernels

    assert PROTOCOLS.get("shapes").with_overrides({"deterministic": True}).deterministic is True
    with pytest.raises(BenchError, match="deterministic must be bool"):
        PROTOCOLS.get("shapes").with_overrides({"deterministic": "yes"})
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before)
