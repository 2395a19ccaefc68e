"""Training protocols: GLIP's per-shot recipe, overrides, budget arithmetic and bad values."""

from __future__ import annotations

import dataclasses
import os
from typing import get_args

import pytest
import torch

from bench.errors import BenchError, UnknownNameError
from bench.options import OptionValueError, command_line, field_types
from bench.train.modes import FROZEN_MODULE_MODES
from bench.train.protocol import LIMITS, PROTOCOLS, FrozenModules, Protocol, resolve_protocol


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
    assert "Did you mean epochs?" in message and "--protocol-set KEY=VALUE" in message and "\n" not in message
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
        ({"schedule": "linear"}, "schedule must be one of 'plateau', 'step', 'cosine', 'constant', got 'linear' (text)"),
        ({"amp": "fp8"}, "amp must be one of 'auto', 'bf16', 'fp16', 'none', got 'fp8'"),
        ({"selection": "bogus"}, "selection must be one of 'best-val', 'last', got 'bogus' (text)"),
        ({"frozen_modules": "some"}, "frozen_modules must be one of 'eval', 'train'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0 (an integer)"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1, got 0"),
        ({"max_steps": 0}, "max_steps must be an integer >= 1 or null, got 0"),
        ({"eval_every": 0}, "eval_every must be an integer >= 1 or null, got 0"),
        ({"epochs": -1}, "epochs must be an integer >= 1, got -1"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ({"terminate_patience": 0}, "terminate_patience must be an integer >= 1 or null, got 0"),
        ({"step_patience": -1}, "step_patience must be an integer >= 0, got -1"),
        ({"gamma": 0}, "gamma must be a number in (0, 1], got 0 (an integer)"),
        ({"gamma": 1.5}, "gamma must be a number in (0, 1], got 1.5 (a number)"),
        ({"warmup_factor": -0.1}, "warmup_factor must be a number in [0, 1]"),
        ({"min_lr": -1e-6}, "min_lr must be a number >= 0"),
        ({"clip_grad_norm": 0}, "clip_grad_norm must be a number > 0 or null"),
        ({"bias_lr_factor": 0}, "bias_lr_factor must be a number > 0"),
        ({"batch_size": "four"}, "batch_size must be an integer >= 1, got 'four' (text)"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5 (a number)"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got true (true/false)"),
        ({"max_steps": "abc"}, "max_steps must be an integer >= 1 or null, got 'abc' (text)"),
        ({"milestones": 0.5}, "milestones must be a list of numbers in (0, 1), got 0.5"),
        ({"milestones": [0.5, 1.5]}, "milestones must be a list of numbers in (0, 1), got [0.5, 1.5]"),
        ({"milestones": ["half"]}, "milestones must be a list of numbers"),
        ({"deterministic": "yes"}, "deterministic must be true or false, got 'yes'"),
        ({"deterministic": 1}, "deterministic must be true or false, got 1"),
    ],
)
def test_bad_override_values_are_explained(override, says):
    (key, _), = override.items()
    with pytest.raises(OptionValueError) as caught:
        resolve_protocol("shapes", "full", override)
    message = str(caught.value)
    assert says in message, message
    assert message.startswith(f"Protocol 'shapes' option {key} must be ") and "\n" not in message
    shapes = PROTOCOLS.get("shapes")  # the example is the protocol's own value, as it is written on the command line
    assert f"Set it with --protocol-set {key}={command_line(getattr(shapes, key))} (the value of protocol 'shapes')." in message


def test_an_unknown_key_suggests_the_closest_field():
    with pytest.raises(BenchError, match=r"\['max_step'\]; valid fields: .* Did you mean max_steps\?"):
        resolve_protocol("shapes", "full", {"max_step": 10})


@pytest.mark.parametrize("key", ["lr", "weight_decay"])
def test_a_method_setting_given_to_the_protocol_points_to_method_set(key):
    with pytest.raises(BenchError, match=r"each method's own: --method-set METHOD\.lr=VALUE"):
        resolve_protocol("shapes", "full", {key: 0})


def test_good_override_values_of_every_kind_are_accepted():
    protocol = resolve_protocol("glip-odinw", "full", {"max_steps": None, "gamma": 1, "clip_grad_norm": None, "amp": "bf16"})
    assert protocol.max_steps is None and protocol.gamma == 1 and protocol.clip_grad_norm is None


def test_integers_for_number_fields_are_stored_as_numbers():
    protocol = resolve_protocol("shapes", "full", {"gamma": 1, "min_lr": 0, "milestones": [0.5, 0.75], "clip_grad_norm": 2})
    assert [type(v) for v in (protocol.gamma, protocol.min_lr, protocol.clip_grad_norm)] == [float, float, float]
    assert protocol.milestones == (0.5, 0.75)


def test_the_registered_protocols_and_their_per_shot_variants_are_valid():
    for entry in PROTOCOLS:
        for shots in ("1", "3", "5", "10", "full"):
            assert resolve_protocol(entry.name, shots) == entry.obj.for_shots(shots)


def test_a_protocol_built_in_code_is_checked_too():
    with pytest.raises(OptionValueError, match=r"^Protocol 'custom' option batch_size must be an integer >= 1, got 0 .*--protocol-set batch_size=4 \(the default\)\.$"):
        Protocol(batch_size=0)


def test_the_choice_types_match_the_modes_they_name():
    assert get_args(FrozenModules) == FROZEN_MODULE_MODES


def test_every_numeric_field_and_only_those_have_a_range():
    numeric = {name for name, annotation in field_types(Protocol).items() if {int, float} & {annotation, *get_args(annotation)}}
    assert set(LIMITS) == numeric


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
    with pytest.raises(BenchError, match="deterministic must be true or false"):
        PROTOCOLS.get("shapes").with_overrides({"deterministic": "yes"})
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before)
