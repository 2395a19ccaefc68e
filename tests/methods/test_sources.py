"""Every default of every method config says where it comes from (paper, official code, or ours)."""

from __future__ import annotations

import dataclasses

import pytest

import methods  # noqa: F401  (registers every method)
from bench.tuning.base import METHODS, SOURCE_KINDS, MethodConfig
from bench.tuning.listing import describe_methods
from bench.tuning.presets import PRESETS
from methods.composition import CompositeMethod, compose
from methods.sdpt import SdptConfig, SdptHeadConfig


def well_formed(source: str) -> bool:
    """One line, starting with a known kind and a colon, with something after it."""
    kind, colon, rest = source.partition(": ")
    return "\n" not in source and kind in SOURCE_KINDS and bool(colon) and bool(rest.strip())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_field_of_every_method_config_has_a_source(name):
    config_class = METHODS.get(name).config_class
    fields = [f.name for f in dataclasses.fields(config_class)]
    assert {"lr", "weight_decay"} <= set(fields)
    assert sorted(config_class.sources) == sorted(fields)
    assert all(well_formed(config_class.sources[f]) for f in fields), dict(config_class.sources)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if issubclass(METHODS.get(n), CompositeMethod)])
def test_composites_take_their_sources_from_their_parts(name):
    cls = METHODS.get(name)
    sources = cls.config_class.sources
    slowest = min((part_cls for _, part_cls in cls.parts), key=lambda part_cls: part_cls.config_class().lr)
    for shared in ("lr", "weight_decay"):  # one setting for all parts: the lowest-lr part's, with its source
        assert sources[shared].startswith("ours: ") and slowest.config_class.sources[shared] in sources[shared]
        assert getattr(cls.config_class(), shared) == getattr(slowest.config_class(), shared)
    for part, part_cls in cls.parts:
        prefix = part.replace("-", "_").replace("+", "_")
        for field, source in part_cls.config_class.sources.items():
            if field not in ("lr", "weight_decay"):
                assert sources[f"{prefix}_{field}"] == source


def test_a_composite_built_on_the_fly_takes_its_slowest_parts_optimiser_settings():
    method_class = compose("coop+lora", ("coop", "lora"))
    assert method_class.name == "coop+lora"
    config_class = method_class.config_class
    assert config_class().lr == METHODS.get("lora").config_class().lr < METHODS.get("coop").config_class().lr
    assert METHODS.get("lora").config_class.sources["lr"] in config_class.sources["lr"]
    assert config_class.sources["lora_rank"] == METHODS.get("lora").config_class.sources["rank"]
    assert config_class.sources["coop_context_tokens"] == METHODS.get("coop").config_class.sources["context_tokens"]


def test_sources_merge_through_subclasses():
    assert SdptHeadConfig.sources["lr"] != SdptConfig.sources["lr"]  # its own rate, its own source
    assert SdptHeadConfig.sources["num_tokens"] == SdptConfig.sources["num_tokens"]  # inherited
    assert METHODS.get("full").config_class.sources["lr"] == MethodConfig.sources["lr"]  # the base's 1e-4


def test_changing_an_inherited_default_without_a_source_is_refused():
    with pytest.raises(TypeError, match=r"changes the default of \['lr'\] without a source"):
        @dataclasses.dataclass(frozen=True)
        class Unsourced(MethodConfig):
            lr: float = 0.5

    @dataclasses.dataclass(frozen=True)
    class Sourced(MethodConfig):
        lr: float = 0.5
        weight_decay: float = 0.05  # unchanged: the base's source still describes it

        sources = {"lr": "ours: a test"}

    assert Sourced.sources["lr"] == "ours: a test"
    assert Sourced.sources["weight_decay"] == MethodConfig.sources["weight_decay"]


def test_the_listing_names_every_method_and_preset_and_verbose_adds_every_default_and_source():
    METHODS.get("coop+vpt")  # made on demand (as by any earlier command or test): not listed as a method
    short, verbose = describe_methods(), describe_methods(verbose=True)
    for entry in METHODS.declared():
        assert f"  {entry.name} " in short
    assert "  coop+vpt " not in short and "a+b[+c]" in short
    for preset in PRESETS.values():
        assert f"@{preset.name} " in short and preset.source in verbose and preset.source not in short
    sdpt = METHODS.get("sdpt").config_class
    for field in dataclasses.fields(sdpt):
        assert sdpt.sources[field.name] in verbose
    assert 'num_tokens = 100' in verbose and 'layers = null' in verbose and "lr = " not in short
