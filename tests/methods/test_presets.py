"""Presets: ``method@preset`` names a registered method with fixed options; no new code paths."""

from __future__ import annotations

import pytest

import methods  # noqa: F401  (registers every method)
from bench.errors import BenchError, UnknownNameError
from bench.tuning.base import METHODS, build_method
from bench.tuning.presets import PRESETS, split_preset
from methods.peft_tuners import ADAPTER_NAME
from tests.methods.test_sources import well_formed

ALL_PRESETS = sorted(PRESETS)


@pytest.mark.parametrize("spec", ALL_PRESETS)
def test_every_preset_resolves_builds_and_trains_its_formula(spec, glip_a_factory):
    preset = PRESETS[spec]
    assert spec == f"{preset.method}@{preset.name}" and preset.method in METHODS
    assert preset.description and well_formed(preset.source)
    method = build_method(spec)
    assert type(method) is METHODS.get(preset.method)
    assert all(getattr(method.config, k) == (tuple(v) if isinstance(v, list) else v) for k, v in preset.options.items())
    model = glip_a_factory()
    trainable = method.apply(model)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model) > 0


def test_split_preset_gives_the_method_and_its_options():
    assert split_preset("sdpt") == ("sdpt", {})
    name, options = split_preset("sdpt-head@official")
    assert name == "sdpt-head"
    assert options["num_tokens"] == 700 and options["lr"] == 1e-5 and options["weight_decay"] == 0.01
    options["num_tokens"] = 1  # a copy: the registry is untouched
    assert PRESETS["sdpt-head@official"].options["num_tokens"] == 700


def test_given_options_override_the_presets():
    config = build_method("sdpt-head@official", {"num_tokens": 8}).config
    assert config.num_tokens == 8 and config.lr == 1e-5


def test_lora_at_sdpt_scales_by_one_over_sixteen(glip_a_factory):
    """loralib's default alpha 1 at rank 16, as SDPT's LoRA baseline."""
    model = glip_a_factory()
    build_method("lora@sdpt").apply(model)
    scalings = {m.scaling[ADAPTER_NAME] for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)}
    assert scalings == {1 / 16}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sdpt-head@oficial", r"Unknown preset 'oficial' of the method 'sdpt-head'\. Did you mean sdpt-head@official\? Its presets: official\."),
        ("vpt@deepest", r"Its presets: per-stage, shallow\."),
        ("sdpt@official", r"The method 'sdpt' has no presets .*Presets: adapter@adaptformer, lora@sdpt, sdpt-head@official"),
        ("sdtp@official", r"Unknown method 'sdtp'"),
    ],
)
def test_unknown_presets_are_answered_with_the_available_ones(spec, message):
    with pytest.raises(UnknownNameError, match=message):
        build_method(spec)


def test_a_preset_with_a_bad_override_is_refused_like_any_option():
    with pytest.raises(BenchError, match=r"Unknown option\(s\) \['rank'\]"):
        build_method("vpt@shallow", {"rank": 2})
