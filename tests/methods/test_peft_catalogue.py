"""The ``peft:<tuner>`` catalogue: every tuner of the installed peft is registered or refused with a
reason, options reach peft's config under peft's names and defaults, and each count formula holds
beyond the defaults (the contract tests check the defaults on both backends)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing

import peft
import pytest
import torch
from peft.utils import PeftType
from torch import nn

import methods  # noqa: F401  (registers every method)
from bench.errors import BenchError, UnknownNameError
from bench.tuning.base import METHODS, build_method
from methods.peft_tuners import (
    ADAPTER_NAME, CATALOGUE, EFFECTIVE_COUNT_NOT_DERIVED, NOT_OPTIONS, REFUSED_TUNERS, TUNERS, UNREGISTERED_TUNERS, _option_type,
    REVIEWED_PEFT_VERSION, catalogue_options, inject, target_layers, target_linears, tuner_method_name, unavailable_reason,
    unreviewed_tuners,
)

NAMES = sorted(CATALOGUE)
TUNER_OF = {tuner.name: tuner for tuner in TUNERS}


def test_every_tuner_of_the_installed_peft_is_registered_or_refused_with_a_reason():
    unreviewed = unreviewed_tuners()
    for peft_type in PeftType:
        name = tuner_method_name(peft_type)
        registered, refused, failing = name in CATALOGUE, name in REFUSED_TUNERS, name in UNREGISTERED_TUNERS
        assert registered + refused + failing + (name in unreviewed) == 1, name
        assert (name in METHODS) == registered
        assert (unavailable_reason(name) is None) == registered
    assert set(CATALOGUE) == {t.name for t in TUNERS if t.available}
    assert EFFECTIVE_COUNT_NOT_DERIVED == {t.name for t in TUNERS if t.redundant is None} and "peft:loha" in EFFECTIVE_COUNT_NOT_DERIVED
    if peft.__version__ == REVIEWED_PEFT_VERSION:  # constraints.txt pins it for development and CI
        assert not unreviewed


def test_a_tuner_of_a_later_peft_is_refused_until_reviewed(monkeypatch):
    monkeypatch.setattr("methods.peft_tuners.unreviewed_tuners", lambda: frozenset({"peft:paca"}))
    with pytest.raises(UnknownNameError, match=rf"'peft:paca' is not offered: .* reviewed on peft {REVIEWED_PEFT_VERSION}"):
        build_method("peft:paca")


def test_asking_for_a_refused_tuner_says_why():
    with pytest.raises(UnknownNameError, match=r"'peft:prefix-tuning' is not offered: a prompt-learning tuner"):
        build_method("peft:prefix-tuning")
    with pytest.raises(UnknownNameError, match="block_size 256"):
        build_method("peft:c3a")
    with pytest.raises(UnknownNameError, match="prompt-learning tuner"):  # also as a part of a composition
        build_method("sdpt+peft:p-tuning")
    with pytest.raises(UnknownNameError, match="Did you mean 'peft:loha'"):  # other names: the registry's own message
        build_method("peft:lohaa")


@pytest.mark.parametrize("name", NAMES)
def test_options_are_the_peft_fields_with_peft_defaults_and_sources(name):
    tuner = TUNER_OF[name]
    config = build_method(name).config
    reference = tuner.peft_config_class(target_modules=["x"])
    built = build_method(name).peft_config(["x"])
    options = catalogue_options(tuner)
    assert [f.name for f in dataclasses.fields(config)] == ["lr", "weight_decay", "groups", *options]
    for option in options:
        assert getattr(config, option) == getattr(reference, option) == getattr(built, option), option
        assert config.sources[option].startswith("official code: huggingface/peft ")
        assert tuner.peft_config_class.__name__ in config.sources[option]
    assert (config.lr, config.weight_decay, config.groups) == (1e-3, 0.0, ("fusion",))
    assert config.sources["lr"] == METHODS.get("lora").config_class.sources["lr"]
    assert pickle.loads(pickle.dumps(config)) == config  # configs travel to worker processes


@pytest.mark.parametrize("name", NAMES)
def test_every_simple_field_of_the_peft_config_is_an_option_or_says_why_not(name):
    """So that a peft release that adds a number field without a range here does not drop it silently."""
    tuner = TUNER_OF[name]
    base = {f.name for f in dataclasses.fields(peft.PeftConfig)}
    hints = typing.get_type_hints(tuner.peft_config_class)
    simple = {f.name for f in dataclasses.fields(tuner.peft_config_class)
              if f.name not in base and _option_type(tuner, f.name, hints[f.name]) is not None}
    assert simple - set(catalogue_options(tuner)) <= set(NOT_OPTIONS) | set(tuner.excluded)


def test_an_option_reaches_the_peft_config_under_its_peft_name():
    method = build_method("peft:lokr", {"r": 4, "alpha": 2, "decompose_both": True})
    config = method.peft_config(["a.b"])
    assert isinstance(config, peft.LoKrConfig) and (config.r, config.alpha, config.decompose_both) == (4, 2, True)
    assert set(config.target_modules) == {"a.b"}
    with pytest.raises(BenchError, match=r"Unknown option\(s\) \['rank_dropout'\] for PeftLokrConfig"):
        build_method("peft:lokr", {"rank_dropout": 0.1})  # acts only in a train mode the harness never sets


# Options that take each count formula through its other branches.
BRANCHES = [
    ("peft:beft", {"groups": ["head"]}),
    ("peft:boft", {"boft_block_size": 0, "boft_block_num": 8}),
    ("peft:deft", {"para": True, "r": 3}),
    ("peft:delora", {"r": 2}),
    ("peft:fourierft", {"n_frequency": 50}),
    ("peft:glora", {"config_A_B": "vector", "config_C": "vector", "config_D_E": "vector"}),
    ("peft:glora", {"config_A_B": "constant", "config_C": "none", "config_D_E": "none", "r": 2}),
    ("peft:gralora", {"r": 4, "hybrid_r": 2, "gralora_k": 4}),
    ("peft:hira", {"r": 2}),
    ("peft:hra", {"r": 4}),
    ("peft:ln-tuning", {"groups": ["fusion", "text_encoder"]}),
    ("peft:loha", {"groups": ["text_encoder"], "r": 2}),
    ("peft:lokr", {"r": 1, "decompose_both": True}),
    ("peft:lokr", {"decompose_factor": 4}),
    ("peft:oft", {"r": 4, "oft_block_size": 0}),
    ("peft:oft", {"oft_block_size": 24}),  # no divisor of 32, 64 or 128: peft moves it to 16 (a tie with 32 goes down)
    ("peft:oft", {"block_share": True}),
    ("peft:osf", {"effective_rank": 10}),
    ("peft:peanut", {"r": 4, "depth": 2}),
    ("peft:psoft", {"r": 4, "psoft_orth": False, "psoft_mag_a": False}),
    ("peft:randlora", {"r": 5}),
    ("peft:supertuning", {"r": 2, "lora_alpha": 2.0, "sparsity": 0.9}),
    ("peft:tinylora", {"weight_tying": 0.5}),
    ("peft:tinylora", {"weight_tying": 1.0}),
    ("peft:unilora", {"theta_d_length": 100}),
    ("peft:vera", {"r": 8}),
]


@pytest.mark.parametrize(("name", "options"), [b for b in BRANCHES if b[0] in CATALOGUE],
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in BRANCHES if n in CATALOGUE])
def test_the_formula_counts_what_peft_adds_with_other_options(name, options, backend):
    model = backend.build()
    method = build_method(name, options)
    trainable = method.apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    assert all(f".{ADAPTER_NAME}." in f"{n}." for n in trainable)
    assert not any(m.training for m in model.modules())  # peft's new layers keep the eval mode of what they wrap


def test_ln_tuning_targets_the_layer_norms_of_the_groups(glip_a_factory):
    model = glip_a_factory()
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)
             and f"{n}.weight" in model.parameter_groups()["fusion"]}
    assert norms and set(target_layers(model, ("fusion",), nn.LayerNorm)) == norms
    trainable = build_method("peft:ln-tuning").apply(model)
    reference = glip_a_factory().state_dict()
    for norm in norms:  # each trains a copy that starts at the pre-trained affine
        assert torch.equal(trainable[f"{norm}.ln_tuning_layers.{ADAPTER_NAME}.weight"], reference[f"{norm}.weight"])
    assert set(target_layers(model, ("fusion",), nn.LayerNorm)) == norms  # found again through peft's wrapper
    with pytest.raises(BenchError, match="hold no nn.LayerNorm"):
        target_layers(model, ("neck",), nn.LayerNorm)


def test_tensors_a_tuner_shares_between_layers_travel_with_the_model(glip_a_factory, task):
    """VeRA keeps its random projections on peft's tuner object; every layer holds them too, so the
    model alone carries them through copies and its state dict."""
    model = glip_a_factory()
    build_method("peft:vera").apply(model)
    projections = [b for n, b in model.named_buffers(remove_duplicate=False) if n.endswith(f"vera_A.{ADAPTER_NAME}")]
    assert len(projections) == len(target_linears(model, ("fusion",))) and all(b is projections[0] for b in projections)
    twin = copy.deepcopy(model)
    copied = [b for n, b in twin.named_buffers(remove_duplicate=False) if n.endswith(f"vera_A.{ADAPTER_NAME}")]
    assert all(b is copied[0] for b in copied) and copied[0] is not projections[0]
    assert torch.equal(copied[0], projections[0])


@pytest.mark.skipif("FROD" not in PeftType.__members__, reason="this peft has no FRoD")
def test_a_tuner_whose_shared_tensors_no_layer_holds_is_refused(glip_a_factory):
    model = glip_a_factory()
    targets = list(target_linears(model, ("fusion",)))
    with pytest.raises(BenchError, match="keeps tensors that no layer of the model holds"):
        inject(model, peft.FrodConfig(target_modules=targets, progressbar=False), targets)
