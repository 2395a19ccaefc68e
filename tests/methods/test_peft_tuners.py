"""LoRA, DoRA and IA3 through peft, targeted by parameter group, and the composition of methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.tuning.base import build_method
from methods.composition import compose
from methods.peft_tuners import ADAPTER_NAME, target_linears


def linear_names_of(model, groups) -> set[str]:
    """The expected targets, computed on an untouched model: Linear modules whose weight is in ``groups``."""
    modules = dict(model.named_modules())
    names = {n for g in groups for n in model.parameter_groups()[g]}
    return {n[: -len(".weight")] for n in names if n.endswith(".weight") and isinstance(modules.get(n[: -len(".weight")]), nn.Linear)}


def test_fusion_default_targets_exactly_the_fusion_projections(glip_a_factory):
    model = glip_a_factory()
    targets = target_linears(model, ("fusion",))
    assert set(targets) == linear_names_of(model, ("fusion",))
    projections = {"v_proj", "l_proj", "values_v_proj", "values_l_proj", "out_v_proj", "out_l_proj"}
    assert {name.rsplit(".", 1)[1] for name in targets} == projections
    assert len(targets) == 6 * len(model.fusion_layers())


def test_several_groups_give_the_union_and_survive_injection(glip_a_factory):
    groups = ("vision_backbone", "text_encoder", "fusion")
    model = glip_a_factory()
    expected = linear_names_of(model, groups)
    assert set(target_linears(model, groups)) == expected
    build_method("lora", {"groups": groups, "rank": 2}).apply(model)
    assert set(target_linears(model, groups)) == expected  # adapters' own lora_A/lora_B are not targets


def test_groups_without_linear_layers_or_unknown_groups_are_refused(glip_a_factory):
    model = glip_a_factory()
    with pytest.raises(BenchError, match="hold no nn.Linear"):
        target_linears(model, ("neck",))
    with pytest.raises(BenchError, match="non-empty subset"):
        target_linears(model, ("fusion", "decoder"))


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_tensors_have_the_formula_shapes_and_peft_names(name, glip_a_factory):
    model = glip_a_factory()
    targets = {n: (m.in_features, m.out_features) for n, m in target_linears(model, ("fusion",)).items()}
    trainable = build_method(name, {"rank": 4}).apply(model)
    for module, (fan_in, fan_out) in targets.items():
        assert trainable[f"{module}.lora_A.{ADAPTER_NAME}.weight"].shape == (4, fan_in)
        assert trainable[f"{module}.lora_B.{ADAPTER_NAME}.weight"].shape == (fan_out, 4)
        assert not trainable[f"{module}.lora_B.{ADAPTER_NAME}.weight"].any()  # B = 0: identity at init
        if name == "dora":
            magnitude = trainable[f"{module}.lora_magnitude_vector.{ADAPTER_NAME}.weight"]
            base = dict(model.named_parameters())[f"{module}.base_layer.weight"]
            assert torch.equal(magnitude, base.norm(dim=1))  # m starts at the row norms of W
    per_layer = 2 if name == "lora" else 3  # A, B (and the magnitude)
    assert len(trainable) == per_layer * len(targets)
    assert all(f".{ADAPTER_NAME}." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == sum(4 * (i + o) + (o if name == "dora" else 0) for i, o in targets.values())


def test_ia3_scales_outputs_and_feedforward_inputs(glip_a_factory):
    model = glip_a_factory()
    targets = {n: (m.in_features, m.out_features) for n, m in target_linears(model, ("fusion",)).items()}
    method = build_method("ia3", {"feedforward": ["out_v_proj"]})
    trainable = method.apply(model)
    for module, (fan_in, fan_out) in targets.items():
        vector = trainable[f"{module}.ia3_l.{ADAPTER_NAME}"]
        assert vector.shape == ((1, fan_in) if module.endswith("out_v_proj") else (fan_out, 1))
        assert torch.equal(vector, torch.ones_like(vector))
    assert method.expected_trainable(model) == sum(p.numel() for p in trainable.values())
    with pytest.raises(BenchError, match="match no targeted layer"):
        build_method("ia3", {"feedforward": ["mlp.fc2"]}).apply(glip_a_factory())


def test_base_weights_keep_their_tensors_under_base_layer(glip_a_factory):
    model = glip_a_factory()
    reference = glip_a_factory().state_dict()
    build_method("lora").apply(model)
    state = model.state_dict()
    for module in target_linears(model, ("fusion",)):
        assert f"{module}.weight" not in state
        assert torch.equal(state[f"{module}.base_layer.weight"], reference[f"{module}.weight"])
        assert f"{module}.base_layer.weight" in model.base_parameter_names()


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_one_step_changes_the_output_through_the_peft_layers(name, glip_a_factory, task):
    model = glip_a_factory()
    trainable = build_method(name).apply(model)
    projection = model.fusion_layers()[0].v_proj
    x = torch.randn(2, projection.in_features)
    before = projection(x).detach()
    optimizer = torch.optim.SGD(trainable.values(), lr=1e-2)
    with torch.no_grad():  # the targets are fusion layers: the frozen image backbone needs no graph
        features = model.backbone(task.images)
    outputs, _ = model.predict(features, model.encode_text([task.prompt]).features)
    sum(logits.sigmoid().mean() for logits in outputs.dot_product_logits).backward()
    assert all(p.grad is not None and p.grad.any() for n, p in trainable.items() if "lora_A" not in n)  # A gets 0 grad while B = 0
    optimizer.step()
    assert not torch.equal(projection(x), before)


def test_peft_methods_do_not_freeze_what_an_earlier_method_trains(glip_a_factory):
    """peft's injection freezes every non-adapter parameter; install must not (methods compose)."""
    model = glip_a_factory()
    bias = build_method("bitfit").apply(model)
    lora = build_method("lora").install(model)
    assert all(p.requires_grad for p in bias.values()) and all(p.requires_grad for p in lora.values())
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(p) for p in bias.values()} | {id(p) for p in lora.values()}
    # peft moved the wrapped layers' biases: the names bitfit returned are stale, the tensors are not
    assert "rpn.head.dyhead_tower.0.b_attn.attn.v_proj.bias" in bias
    assert dict(model.named_parameters())["rpn.head.dyhead_tower.0.b_attn.attn.v_proj.base_layer.bias"].requires_grad


def test_a_composed_method_installs_every_part_and_sums_their_formulas(glip_a_factory, task):
    method_class = compose("lora+bitfit", ("lora", "bitfit"))
    method = method_class(method_class.config_class.from_dict({"lora_rank": 2, "lora_groups": ["text_encoder"]}))
    assert method.config.lr == build_method("lora").config.lr  # the lowest-lr part's settings (both 1e-3: the first)
    model = glip_a_factory()
    trainable = method.apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    assert any("lora_B" in n for n in trainable) and any(n.endswith(".bias") for n in trainable)
    assert method_class.identity_at_init
    renamed = compose("bitfit+lora", ("bitfit", "lora"))().apply(glip_a_factory())  # lora renames bitfit's fusion biases
    assert "rpn.head.dyhead_tower.0.b_attn.attn.v_proj.base_layer.bias" in renamed
    with pytest.raises(BenchError, match=r"Unknown option\(s\) \['rank'\]"):
        method_class.config_class.from_dict({"rank": 2})


def test_sdpt_plus_lora_trains_the_tokens_and_the_low_rank_factors(glip_a_factory):
    model = glip_a_factory()
    method = build_method("sdpt+lora", {"sdpt_num_tokens": 2, "lora_rank": 2})
    trainable = method.apply(model)
    assert sum("token_extension" in n for n in trainable) == len(model.fusion_layers())
    assert sum("lora_" in n for n in trainable) == 2 * 6 * len(model.fusion_layers())
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
