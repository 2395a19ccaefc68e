"""Every option of every method is checked when its config is built, so a bad ``--method-set`` value is
refused while a sweep is planned, in one paragraph that names the method, the option, the value and
how to set it, instead of failing later inside a cell (``TypeError: '<' not supported ...``)."""

from __future__ import annotations

import math
import pickle
import types
from typing import Any, Literal, Union, get_args, get_origin

import pytest

import methods  # noqa: F401  (registers every method)
from bench.errors import BenchError
from bench.models.base import PARAMETER_GROUPS
from bench.options import OptionValueError, Range, command_line, field_types
from bench.tuning.base import METHODS, build_method
from bench.tuning.listing import describe_methods
from bench.tuning.presets import PRESETS, Preset
from methods.composition import CompositeMethod
from methods.peft_tuners import ParameterGroup

ALL_METHODS = METHODS.names()

# The contract: every numeric option's range, per method (composites: their parts' ranges, prefixed).
PROMPT = {"lr": "> 0", "weight_decay": ">= 0"}
LIMITS = {
    "zero-shot": {"lr": ">= 0", "weight_decay": ">= 0"},
    "full": {**PROMPT, "freeze_vision_stages": "in [-1, 5]", "text_encoder_lr": "> 0"},
    "linear-probe": PROMPT,
    "bitfit": PROMPT,
    "coop": {**PROMPT, "context_tokens": ">= 1"},
    "maple": {**PROMPT, "context_tokens": ">= 1", "prompt_depth": ">= 1"},
    "vpt": {**PROMPT, "num_tokens": ">= 1", "stages": ">= 0"},
    "glip-prompt": {**PROMPT, "rows": ">= 1"},
    "sdpt": {**PROMPT, "num_tokens": ">= 1", "layers": ">= 0"},
    "sdpt-head": {**PROMPT, "num_tokens": ">= 1", "layers": ">= 0"},
    "lora": {**PROMPT, "rank": ">= 1", "alpha": "> 0", "dropout": "in [0, 1)"},
    "dora": {**PROMPT, "rank": ">= 1", "alpha": "> 0", "dropout": "in [0, 1)"},
    "ia3": PROMPT,
    "adapter": {**PROMPT, "reduction_factor": ">= 1", "scale": "> 0"},
    "peft:beft": {**PROMPT},
    "peft:boft": {**PROMPT, "boft_block_size": ">= 0", "boft_block_num": ">= 0", "boft_dropout": "in [0, 1)"},
    "peft:deft": {**PROMPT, "r": ">= 1", "alpha": "> 0", "deft_dropout": "in [0, 1)"},
    "peft:fourierft": {**PROMPT, "n_frequency": ">= 1", "scaling": "> 0", "random_loc_seed": ">= 0"},
    "peft:glora": {**PROMPT, "r": ">= 1"},
    "peft:gralora": {**PROMPT, "r": ">= 1", "hybrid_r": ">= 0", "alpha": "> 0", "gralora_dropout": "in [0, 1)", "gralora_k": ">= 1"},
    "peft:hira": {**PROMPT, "r": ">= 1", "hira_dropout": "in [0, 1)"},
    "peft:hra": {**PROMPT, "r": ">= 1"},
    "peft:ln-tuning": {**PROMPT},
    "peft:loha": {**PROMPT, "r": ">= 1", "alpha": "> 0"},
    "peft:lokr": {**PROMPT, "r": ">= 1", "alpha": "> 0", "decompose_factor": ">= -1"},
    "peft:oft": {**PROMPT, "r": ">= 0", "oft_block_size": ">= 0", "module_dropout": "in [0, 1)", "eps": "> 0",
                 "num_cayley_neumann_terms": ">= 1"},
    "peft:osf": {**PROMPT, "effective_rank": ">= 1"},
    "peft:peanut": {**PROMPT, "r": ">= 1", "depth": ">= 0", "scaling": "> 0"},
    "peft:psoft": {**PROMPT, "r": ">= 1", "psoft_alpha": "> 0", "psoft_dropout": "in [0, 1)", "psoft_svd_lowrank_niter": ">= 1",
                   "random_seed": ">= 0", "num_cayley_neumann_terms": ">= 1", "cayley_neumann_eps": "> 0"},
    "peft:randlora": {**PROMPT, "r": ">= 1", "projection_prng_key": ">= 0", "randlora_dropout": "in [0, 1)", "randlora_alpha": "> 0"},
    "peft:supertuning": {**PROMPT, "sparsity": "in [0, 1)", "r": ">= 1", "lora_alpha": "> 0", "lora_dropout": "in [0, 1)"},
    "peft:tinylora": {**PROMPT, "r": ">= 1", "u": ">= 1", "weight_tying": "in [0, 1]", "projection_seed": ">= 0",
                      "tinylora_dropout": "in [0, 1)"},
    "peft:unilora": {**PROMPT, "r": ">= 1", "proj_seed": ">= 0", "theta_d_length": ">= 1", "unilora_dropout": "in [0, 1)",
                     "init_theta_d_bound": "> 0"},
    "peft:vera": {**PROMPT, "r": ">= 1", "projection_prng_key": ">= 0", "vera_dropout": "in [0, 1)", "d_initial": "> 0"},
    "sdpt+lora": {**PROMPT, "sdpt_num_tokens": ">= 1", "sdpt_layers": ">= 0", "lora_rank": ">= 1", "lora_alpha": "> 0",
                  "lora_dropout": "in [0, 1)"},
    "dual-prompt": {**PROMPT, "coop_context_tokens": ">= 1", "vpt_num_tokens": ">= 1", "vpt_stages": ">= 0"},
}


def fields_of(name: str) -> list[tuple[str, str, Any]]:
    """``(method, field, resolved annotation)`` for every field of ``name``'s config."""
    return [(name, field, annotation) for field, annotation in field_types(METHODS.get(name).config_class).items()]


ALL_FIELDS = [entry for name in ALL_METHODS for entry in fields_of(name)]
FIELD_IDS = [f"{name}.{field}" for name, field, _ in ALL_FIELDS]


def core(annotation: Any) -> tuple[Any, bool]:
    """``(X, optional)`` for ``X | None``; ``(annotation, False)`` otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        (member,) = [a for a in get_args(annotation) if a is not type(None)]
        return member, True
    return annotation, False


def wrong_values(annotation: Any) -> list[Any]:
    """Values of the wrong kind for ``annotation``, as JSON or text can bring them; an annotation this
    does not know fails the test, so a new kind of option gets cases here."""
    kind, optional = core(annotation)
    values: list[Any] = [{"a": 1}] + ([] if optional else [None])
    if kind is int:
        return values + ["abc", "8", 2.5, True, [1]]
    if kind is float:
        return values + ["abc", "0.1", True, [0.5], math.nan, math.inf]
    if kind is bool:
        return values + ["yes", "true", 1, 0]
    if get_origin(kind) is Literal:
        return values + ["bogus", 1, True, list(get_args(kind))[:1]]
    if get_origin(kind) is tuple:
        item = get_args(kind)[0]
        values += [5, [None], [{"a": 1}]]
        if item is int:
            return values + ["0", ["0"], [True], [1.5]]
        if item is str:
            return values + ["abc", [1], [True]]
        if get_origin(item) is Literal:
            return values + [get_args(item)[0], ["bogus"], [1]]
    raise AssertionError(f"no wrong values known for {annotation!r}; add a case")


def outside(annotation: Any, limit: Range) -> list[Any]:
    """Numbers just outside ``limit`` (as lists for a list option), of ``annotation``'s number type."""
    kind, _ = core(annotation)
    item = get_args(kind)[0] if get_origin(kind) is tuple else kind
    step = 1 if item is int else 1e-9
    values = [limit.low if limit.low_open else limit.low - step]
    if limit.high is not None:
        values.append(limit.high if limit.high_open else limit.high + step)
    values = [item(v) for v in values]
    return [[v] for v in values] if get_origin(kind) is tuple else values


# ----------------------------------------------------------------------------- types
@pytest.mark.parametrize(("name", "field", "annotation"), ALL_FIELDS, ids=FIELD_IDS)
def test_a_value_of_the_wrong_kind_is_refused_naming_the_method_option_and_value(name, field, annotation):
    for value in wrong_values(annotation):
        with pytest.raises(OptionValueError) as caught:
            build_method(name, {field: value})
        message = str(caught.value)
        assert message.startswith(f"{name} option {field} must be "), message
        assert f"got {value!r}" in message if isinstance(value, str) else "got " in message
        assert f"Set it with --method-set {name}.{field}=" in message and "\n" not in message


@pytest.mark.parametrize("name", ALL_METHODS)
def test_defaults_construct_and_round_trip_through_json(name):
    config_class = METHODS.get(name).config_class
    config = config_class()
    assert config_class.from_dict(config.to_dict()) == config
    assert build_method(name, config.to_dict()).config == config


def test_the_reported_values_are_refused_before_any_cell_runs():
    with pytest.raises(OptionValueError) as caught:
        build_method("sdpt", {"num_tokens": "abc"})
    assert str(caught.value) == ("sdpt option num_tokens must be an integer >= 1, got 'abc' (text). "
                                 "Set it with --method-set sdpt.num_tokens=100 (the default).")
    with pytest.raises(OptionValueError, match=r"num_tokens must be an integer >= 1, got 2\.5 \(a number\)"):
        build_method("sdpt", {"num_tokens": 2.5})


def test_a_bool_is_not_an_integer_nor_an_integer_a_bool():
    with pytest.raises(OptionValueError, match=r"got true \(true/false\)"):
        build_method("lora", {"rank": True})
    with pytest.raises(OptionValueError, match=r"shared must be true or false, got 1 \(an integer\)"):
        build_method("sdpt", {"shared": 1})


@pytest.mark.parametrize(("name", "field", "annotation"), [e for e in ALL_FIELDS if core(e[2])[0] is float],
                         ids=[i for i, e in zip(FIELD_IDS, ALL_FIELDS) if core(e[2])[0] is float])
def test_an_integer_for_a_number_option_is_stored_as_a_number(name, field, annotation):
    limit = METHODS.get(name).config_class.limits.get(field)
    value = next(v for v in (1, 0) if limit is None or v in limit)
    stored = getattr(build_method(name, {field: value}).config, field)
    assert type(stored) is float and stored == value


def test_lists_are_stored_as_tuples_and_text_choices_as_given():
    config = build_method("sdpt", {"layers": [1, 0], "init": "zeros"}).config
    assert config.layers == (1, 0) and config.init == "zeros"
    assert METHODS.get("lora").config_class(groups=["fusion", "head"]).groups == ("fusion", "head")


def test_the_parameter_group_type_names_the_models_groups():
    assert get_args(ParameterGroup) == PARAMETER_GROUPS


# ----------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_number_option_has_the_declared_range(name):
    config_class = METHODS.get(name).config_class
    numeric = {field for _, field, annotation in fields_of(name)
               if {int, float} & {core(annotation)[0], *get_args(core(annotation)[0])}}
    assert {field: str(limit) for field, limit in config_class.limits.items()} == LIMITS[name]
    assert set(config_class.limits) == numeric


@pytest.mark.parametrize(("name", "field", "annotation"), [e for e in ALL_FIELDS if e[1] in LIMITS[e[0]]],
                         ids=[i for i, e in zip(FIELD_IDS, ALL_FIELDS) if e[1] in LIMITS[e[0]]])
def test_numbers_outside_the_range_are_refused_and_the_bounds_accepted(name, field, annotation):
    limit = METHODS.get(name).config_class.limits[field]
    default = getattr(METHODS.get(name).config_class(), field)
    for value in outside(annotation, limit):
        with pytest.raises(OptionValueError) as caught:
            build_method(name, {field: value})
        assert f"{name} option {field} must be " in str(caught.value) and str(limit) in str(caught.value)
        assert f"--method-set {name}.{field}={command_line(default)} (the default)." in str(caught.value)
    kind, _ = core(annotation)
    bounds = [b for b, is_open in ((limit.low, limit.low_open), (limit.high, limit.high_open)) if b is not None and not is_open]
    for bound in bounds:
        value = [int(bound)] if get_origin(kind) is tuple else bound
        build_method(name, {field: value})


# ----------------------------------------------------------------------------- checks of more than one value
@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("sdpt", {"layers": []}, "sdpt option layers must be a non-empty list of distinct"),
        ("sdpt", {"layers": [0, 0]}, "got [0, 0] (a list)"),
        ("vpt", {"stages": []}, "vpt option stages must be a non-empty list"),
        ("sdpt+lora", {"sdpt_layers": [1, 1]}, "sdpt+lora option sdpt_layers must be a non-empty list of distinct"),
        ("dual-prompt", {"vpt_stages": []}, "Set it with --method-set dual-prompt.vpt_stages=null (the default)."),
    ],
)
def test_checks_of_a_whole_value_are_worded_like_the_others_also_in_composites(name, options, says):
    with pytest.raises(OptionValueError) as caught:
        build_method(name, options)
    assert says in str(caught.value)


@pytest.mark.parametrize("name", [n for n in ALL_METHODS if issubclass(METHODS.get(n), CompositeMethod)])
def test_composites_check_their_parts_options_with_the_parts_types_and_ranges(name):
    cls = METHODS.get(name)
    composite = field_types(cls.config_class)
    for part, part_cls in cls.parts:
        prefix = part.replace("-", "_").replace("+", "_")
        for field, annotation in field_types(part_cls.config_class).items():
            if field not in ("lr", "weight_decay"):
                assert composite[f"{prefix}_{field}"] == annotation
                assert cls.config_class.limits.get(f"{prefix}_{field}") == part_cls.config_class.limits.get(field)
    assert build_method(name).part_methods()  # the defaults build every part


# ----------------------------------------------------------------------------- presets and messages
def test_presets_build_and_a_bad_preset_value_names_the_preset(monkeypatch):
    for spec in PRESETS:
        build_method(spec)
    monkeypatch.setitem(PRESETS, "sdpt@broken", Preset("sdpt", "broken", {"num_tokens": 0}, "a test", "ours: a test"))
    with pytest.raises(OptionValueError) as caught:
        build_method("sdpt@broken")
    assert str(caught.value) == ("sdpt@broken option num_tokens must be an integer >= 1, got 0 (an integer) from the preset "
                                 "sdpt@broken. Set it with --method-set sdpt@broken.num_tokens=100 (the default).")
    assert build_method("sdpt@broken", {"num_tokens": 4}).config.num_tokens == 4  # an option overrides it
    with pytest.raises(OptionValueError) as caught:
        build_method("sdpt@broken", {"num_tokens": -1})
    assert "from the preset" not in str(caught.value)  # the given value is the user's, not the preset's


def test_a_config_built_directly_says_how_to_set_the_option():
    with pytest.raises(OptionValueError, match=r"^SdptConfig option num_tokens .* --method-set METHOD\.num_tokens=100 \(the default\)\.$"):
        METHODS.get("sdpt").config_class(num_tokens=0)


def test_the_error_survives_a_trip_to_a_worker_process():
    with pytest.raises(OptionValueError) as caught:
        build_method("lora", {"dropout": 1.0})
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, BenchError) and str(copy) == str(caught.value) and copy.bad == caught.value.bad


def test_the_verbose_listing_shows_what_each_option_accepts():
    listing = describe_methods(verbose=True)
    assert "num_tokens = 100 (an integer >= 1)" in listing and "dropout = 0.0 (a number in [0, 1))" in listing
    assert "init = \"uniform\" (one of 'uniform', 'normal', 'zeros')" in listing
    assert "layers = null (a list of integers >= 0 or null)" in listing
