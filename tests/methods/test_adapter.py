"""Bottleneck adapters beyond the contract: the parallel (AdaptFormer) preset and the fusion sites on both
backends, what a serial adapter computes, the effective count against the Jacobian rank, bad groups."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

import methods  # noqa: F401  (registers every method)
from bench.errors import BenchError
from bench.tuning.base import build_method
from methods.adapter import Bottleneck


@pytest.mark.parametrize("name, options", [("adapter@adaptformer", {}), ("adapter", {"groups": ["fusion"]}),
                                           ("adapter", {"groups": ["text_encoder"], "positions": ["feed_forward"]})])
def test_every_mode_and_group_installs_with_its_count_and_starts_as_the_base(name, options, backend):
    base = backend.build()
    reference = backend.outputs(base, backend.task)
    method = build_method(name, options)
    model = backend.build()
    trainable = method.apply(model)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model) > 0
    for expected, got in zip(reference, backend.outputs(model, backend.task)):
        assert torch.equal(expected, got)  # up is zero: bit-identical at init
    with torch.no_grad():
        for parameter in trainable.values():
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert any(not torch.allclose(e, g) for e, g in zip(reference, backend.outputs(model, backend.task)))


def test_the_adaptformer_preset_sits_beside_the_feed_forward_layers_only(glip_a_factory):
    method = build_method("adapter@adaptformer")
    model = glip_a_factory()
    sites = method.sites(model)
    assert {s.kind for s in sites} == {"feed_forward"} and method.config.scale == 0.1
    method.apply(model)
    adapter = sites[0].exit.output_adapter
    assert not adapter.serial and adapter.down.in_features == sites[0].input_width


def test_a_serial_adapter_adds_its_bottleneck_of_the_sublayer_output():
    torch.manual_seed(0)
    adapter = Bottleneck(6, 6, 2, "swish", 0.5, serial=True, like=torch.zeros(1))
    torch.nn.init.normal_(adapter.up.weight)
    output, sublayer_input = torch.randn(3, 6), torch.randn(3, 6)
    expected = output + 0.5 * adapter.up(torch.nn.functional.silu(adapter.down(output)))
    assert torch.allclose(adapter(output, sublayer_input), expected)


@pytest.mark.parametrize("activation, lost", [("swish", 0), ("gelu", 0), ("relu", 3)])
def test_the_effective_count_is_the_jacobian_rank_of_one_bottleneck(activation, lost):
    torch.manual_seed(0)
    adapter = Bottleneck(8, 8, 3, activation, 1.0, serial=True, like=torch.zeros(1, dtype=torch.float64)).double()
    torch.nn.init.normal_(adapter.up.weight)
    params = {name: p.detach() for name, p in adapter.named_parameters()}
    inputs = torch.randn(40, 8, dtype=torch.float64)

    def outputs(values):
        return functional_call(adapter, values, (inputs, inputs)).reshape(-1)

    jacobian = torch.cat([j.reshape(j.shape[0], -1) for j in jacrev(outputs)(params).values()], dim=1)
    count = sum(p.numel() for p in params.values())
    assert int(torch.linalg.matrix_rank(jacobian)) == count - lost


def test_groups_without_adapter_sites_are_refused_with_the_ones_that_have_them(glip_a_factory):
    with pytest.raises(BenchError, match="adapter option groups must be"):
        build_method("adapter", {"groups": ["head"]})
    with pytest.raises(BenchError, match="non-empty list of distinct"):
        build_method("adapter", {"positions": []})
