"""Any ``a+b`` of registered methods, made on demand: options per part, counts as the sum, clashes refused.

The contract tests (:mod:`tests.methods.test_contract`) run on some of these composites too; here is
what is particular to composing: the name resolves without being declared, ``part.field`` options
reach the part, and two parts that claim the same parameter or extension slot, or two peft parts,
are refused with both named, before anything trains.
"""

from __future__ import annotations

import pytest

import methods  # noqa: F401  (registers every method)
from bench.errors import BenchError, UnknownNameError
from bench.tuning.base import METHODS, build_method
from methods.composition import CompositeMethod


@pytest.mark.parametrize("name, parts", [("sdpt+bitfit", ("sdpt", "bitfit")), ("coop+vpt", ("coop", "vpt")),
                                         ("sdpt+ia3", ("sdpt", "ia3"))])
def test_a_composition_of_registered_methods_resolves_without_being_declared(name, parts, backend):
    method = build_method(name)
    assert isinstance(method, CompositeMethod) and [part for part, _ in method.parts] == list(parts)
    model = backend.build()
    trainable = method.apply(model)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    assert method.expected_trainable(backend.build()) == sum(
        build_method(part).expected_trainable(backend.build()) for part in parts)
    assert name in METHODS.names()  # made once, then registered


def test_options_reach_a_part_as_part_dot_field_or_as_the_prefixed_field():
    dotted = build_method("sdpt+lora", {"lora.rank": 4, "sdpt.num_tokens": 3})
    prefixed = build_method("sdpt+lora", {"lora_rank": 4, "sdpt_num_tokens": 3})
    assert dotted.config == prefixed.config
    lora, sdpt = {type(m).name: m for m in dotted.part_methods()}["lora"], dotted.part_methods()[0]
    assert lora.config.rank == 4 and sdpt.config.num_tokens == 3
    with pytest.raises(BenchError, match="Unknown option"):
        build_method("sdpt+lora", {"lora.colour": 1})


def test_an_unknown_part_is_named_with_the_closest_method():
    with pytest.raises(UnknownNameError, match=r"Unknown method 'lroa'\. Did you mean 'lora'"):
        build_method("sdpt+lroa")


@pytest.mark.parametrize("name, clash", [
    ("full+bitfit", r"the parts 'full' and 'bitfit' both train .*bias"),
    ("coop+maple", r"the parts 'coop' and 'maple' both fill input_embedding_hook"),
    ("vpt+maple", r"the parts 'vpt' and 'maple' both fill extra_tokens"),
    ("sdpt+sdpt-head", r"the parts 'sdpt' and 'sdpt-head' both fill token_extension"),
    ("lora+ia3", r"'ia3' cannot be installed after lora: .*already holds peft adapters"),
])
def test_parts_that_claim_the_same_parameter_slot_or_layer_are_refused(name, clash, glip_a_factory):
    with pytest.raises(BenchError, match=clash):
        build_method(name).apply(glip_a_factory())


def test_options_address_each_peft_part_even_though_two_peft_parts_do_not_install(glip_a_factory):
    method = build_method("lora+ia3", {"lora.groups": ["fusion"], "ia3.groups": ["text_encoder"]})
    assert [m.config.groups for m in method.part_methods()] == [("fusion",), ("text_encoder",)]
    with pytest.raises(BenchError, match="already holds peft adapters"):
        method.apply(glip_a_factory())
