"""The VL-DyHead tower against the official code (parity fixture A) and its fusion extension slot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.models.glip.config import GLIP_L, GLIP_T, GlipConfig, from_reduced_config
from bench.models.glip.fusion import BiMultiHeadAttention
from bench.models.glip.text_features import TextFeatures
from bench.models.glip.tower import DyHeadTower, build_dyhead_tower

TOWER_PREFIX = "rpn.head.dyhead_tower."
FEATURE_TOL = dict(atol=1e-4, rtol=1e-4)  # above the official code's run-to-run spread (tests/fixtures/README.md)
GRAD_TOL = dict(atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def config_a(fixture_a_dir) -> GlipConfig:
    return from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")


@pytest.fixture(scope="module")
def tower_weights(fixture_a_dir) -> dict[str, torch.Tensor]:
    state = torch.load(fixture_a_dir / "glip_reduced_A.pth", weights_only=True)["model"]
    prefix = "module." + TOWER_PREFIX
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _loaded_tower(config: GlipConfig, weights: dict[str, torch.Tensor]) -> DyHeadTower:
    tower = build_dyhead_tower(config)
    tower.load_state_dict(weights, strict=True)
    return tower.eval()


@pytest.fixture()
def tower(config_a, tower_weights) -> DyHeadTower:
    return _loaded_tower(config_a, tower_weights)


@pytest.fixture(scope="module")
def inputs(fixture_a_reference) -> tuple[list[torch.Tensor], TextFeatures]:
    visual = [fixture_a_reference[f"eval.backbone.fpn.P{level}"] for level in range(3, 8)]
    return visual, TextFeatures(fixture_a_reference["eval.lang.hidden"], fixture_a_reference["eval.lang.masks"])


def _max_diffs(step, reference, row=slice(None)) -> tuple[list[float], float]:
    key = f"eval.tower.{step.index}.{step.name}"
    visual = [(step.visual[l][row] - reference[f"{key}.visual.{l}"]).abs().max().item() for l in range(5)]
    return visual, (step.text.hidden[row] - reference[f"{key}.lang_hidden"]).abs().max().item()


# --- parity with the official code -------------------------------------------------------------


def test_every_tower_module_matches_the_official_outputs(tower, inputs, fixture_a_reference):
    with torch.no_grad():
        steps = tower.forward_steps(*inputs)
    assert [s.name for s in steps] == ["VLFuse", "BertEncoderLayer", "DyConv"] * 2
    report = []
    for step in steps:
        key = f"eval.tower.{step.index}.{step.name}"
        for level, out in enumerate(step.visual):
            torch.testing.assert_close(out, fixture_a_reference[f"{key}.visual.{level}"], **FEATURE_TOL)
        torch.testing.assert_close(step.text.hidden, fixture_a_reference[f"{key}.lang_hidden"], **FEATURE_TOL)
        visual, text = _max_diffs(step, fixture_a_reference)
        report.append(f"{key}: visual {max(visual):.1e}, text {text:.1e}")
    print("\n".join(report))


def test_batch_rows_are_independent_and_match_the_reference(tower, inputs, fixture_a_reference):
    visual, text = inputs
    # Row 1: other features and a shorter prompt; row 0 must still equal the batch-1 reference.
    generator = torch.Generator().manual_seed(0)
    other_visual = [v + 0.5 * torch.randn(v.shape, generator=generator) for v in visual]
    other_mask = text.mask.clone()
    other_mask[:, 4:] = 0
    other_text = TextFeatures(text.hidden + torch.randn(text.hidden.shape, generator=generator), other_mask)
    batch_visual = [torch.cat([a, b]) for a, b in zip(visual, other_visual)]
    batch_text = TextFeatures(torch.cat([text.hidden, other_text.hidden]), torch.cat([text.mask, other_text.mask]))
    with torch.no_grad():
        steps = tower.forward_steps(batch_visual, batch_text)
        alone = tower(other_visual, other_text)
    for step in steps:
        visual_diff, text_diff = _max_diffs(step, fixture_a_reference, row=slice(0, 1))
        assert max(visual_diff) < 1e-4 and text_diff < 1e-4, (step.index, visual_diff, text_diff)
    out_visual, out_text = steps[-1].visual, steps[-1].text
    for batched, single in zip(out_visual, alone[0]):
        torch.testing.assert_close(batched[1:], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_text.hidden[1:], alone[1].hidden, atol=1e-5, rtol=1e-5)


def test_inputs_are_not_modified(tower, inputs):
    visual, text = inputs
    before = [v.clone() for v in visual], text.hidden.clone()
    with torch.no_grad():
        out_visual, out_text = tower(list(visual), text)
    assert out_text is not text and out_text.mask is text.mask
    assert all(torch.equal(a, b) for a, b in zip(visual, before[0])) and torch.equal(text.hidden, before[1])


@pytest.mark.parametrize("preset, manifest", [(GLIP_T, "glip_manifest_T.tsv"), (GLIP_L, "glip_manifest_L.tsv")])
def test_full_size_tower_has_the_official_keys_and_shapes(preset, manifest, fixtures_dir: Path):
    expected = {}
    for line in (fixtures_dir / manifest).read_text().splitlines():
        if line.startswith("module." + TOWER_PREFIX):
            key, shape, dtype, _kind = line.split("\t")
            expected[key[len("module." + TOWER_PREFIX):]] = (shape, dtype)
    with torch.device("meta"):
        tower = build_dyhead_tower(preset)
    ours = {k: (str(list(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in tower.state_dict().items()}
    assert ours == expected
    assert list(ours) == list(expected)  # same order as the official state dict, too
    assert len(tower) == 3 * preset.dyhead.num_convs


def test_tower_runs_finite_under_bf16_autocast(tower, inputs):
    with torch.no_grad():
        reference_visual, reference_text = tower(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            visual, text = tower(*inputs)
    assert all(torch.isfinite(v).all() for v in visual) and torch.isfinite(text.hidden).all()
    assert [v.shape for v in visual] == [v.shape for v in reference_visual]
    # bf16 keeps ~3 significant digits: the result stays near the float32 one.
    relative = (text.hidden.float() - reference_text.hidden).norm() / reference_text.hidden.norm()
    assert relative < 0.05


# --- the fusion layers and their token-extension slot -------------------------------------------


class AppendTokens(nn.Module):
    """A test extension: fixed rows appended to the image and text tokens, with a chosen mask value."""

    def __init__(self, v_rows: torch.Tensor, l_rows: torch.Tensor, mask_value: int) -> None:
        super().__init__()
        self.v_rows = nn.Parameter(v_rows)
        self.l_rows = nn.Parameter(l_rows)
        self.mask_value = mask_value

    def extend(self, v_hat, l_hat, text_mask):
        batch = v_hat.shape[0]
        extra_mask = text_mask.new_full((batch, self.l_rows.shape[0]), self.mask_value)
        return (
            torch.cat([v_hat, self.v_rows.expand(batch, -1, -1)], dim=1),
            torch.cat([l_hat, self.l_rows.expand(batch, -1, -1)], dim=1),
            torch.cat([text_mask, extra_mask], dim=1),
        )


def _extension(config: GlipConfig, k_v: int, k_l: int, mask_value: int) -> AppendTokens:
    generator = torch.Generator().manual_seed(1)
    return AppendTokens(
        torch.randn(k_v, config.dyhead.channels, generator=generator),
        torch.randn(k_l, config.text.hidden_size, generator=generator),
        mask_value,
    )


def _fuse(tower, visual, text):
    with torch.no_grad():
        return tower[0](visual, text)


def _batch_of_two(visual, text):
    return [torch.cat([v, v.flip(-1)]) for v in visual], TextFeatures(torch.cat([text.hidden, text.hidden]), torch.cat([text.mask] * 2))


def test_fusion_layers_expose_the_projections_and_an_empty_slot(tower, config_a):
    layers = tower.fusion_layers()
    assert len(layers) == config_a.dyhead.num_convs
    assert all(isinstance(layer, BiMultiHeadAttention) and layer.token_extension is None for layer in layers)
    assert layers[0] is tower[0].b_attn.attn
    for name in ("v_proj", "l_proj", "values_v_proj", "values_l_proj", "out_v_proj", "out_l_proj"):
        assert isinstance(getattr(layers[0], name), nn.Linear)
    assert layers[0].v_proj.weight.shape == (config_a.fusion.embed_dim, config_a.dyhead.channels)
    assert layers[0].l_proj.weight.shape == (config_a.fusion.embed_dim, config_a.text.hidden_size)


@pytest.mark.parametrize("batch", [1, 2])
def test_masked_text_tokens_leave_the_image_branch_exactly_unchanged(tower, config_a, inputs, batch):
    # Appended text rows with mask 0 get -9e15 on the image side: zero weight, so the image output
    # is bit-identical; the text side attends over all image rows, appended ones included, so it moves.
    visual, text = inputs if batch == 1 else _batch_of_two(*inputs)
    plain_visual, plain_text = _fuse(tower, visual, text)
    tower.fusion_layers()[0].token_extension = _extension(config_a, k_v=5, k_l=3, mask_value=0)
    ext_visual, ext_text = _fuse(tower, visual, text)
    assert [v.shape for v in ext_visual] == [v.shape for v in plain_visual]
    assert ext_text.hidden.shape == plain_text.hidden.shape
    for extended, plain in zip(ext_visual, plain_visual):
        assert torch.equal(extended, plain)
    assert (ext_text.hidden - plain_text.hidden).abs().max() > 1e-3


def test_unmasked_text_tokens_change_the_image_branch(tower, config_a, inputs):
    plain_visual, _ = _fuse(tower, *inputs)
    tower.fusion_layers()[0].token_extension = _extension(config_a, k_v=0, k_l=3, mask_value=1)
    ext_visual, ext_text = _fuse(tower, *inputs)
    assert ext_text.hidden.shape == inputs[1].hidden.shape
    assert min((e - p).abs().max() for e, p in zip(ext_visual, plain_visual)) > 1e-3


def test_an_empty_extension_and_removing_it_reproduce_the_plain_layer(tower, config_a, inputs):
    plain_visual, plain_text = _fuse(tower, *inputs)
    layer = tower.fusion_layers()[0]
    for extension in (_extension(config_a, k_v=0, k_l=0, mask_value=0), None):
        layer.token_extension = extension
        visual, text = _fuse(tower, *inputs)
        assert all(torch.equal(a, b) for a, b in zip(visual, plain_visual))
        assert torch.equal(text.hidden, plain_text.hidden)


def test_extension_parameters_train_through_the_fusion_layer(tower, config_a, inputs):
    extension = _extension(config_a, k_v=4, k_l=2, mask_value=1)
    tower.fusion_layers()[1].token_extension = extension
    assert "3.b_attn.attn.token_extension.v_rows" in tower.state_dict()
    visual, text = tower(*inputs)
    (sum(v.sum() for v in visual) + text.hidden.sum()).backward()
    assert extension.v_rows.grad.abs().sum() > 0 and extension.l_rows.grad.abs().sum() > 0


def test_an_extension_that_removes_tokens_is_refused(tower, inputs):
    class Truncate(nn.Module):
        def extend(self, v_hat, l_hat, text_mask):
            return v_hat[:, 1:], l_hat, text_mask

    tower.fusion_layers()[0].token_extension = Truncate()
    with pytest.raises(BenchError, match="must append rows"):
        _fuse(tower, *inputs)


# --- gradient checkpointing ---------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_changes_no_output_or_gradient(config_a, tower_weights, inputs, dropout):
    config = dataclasses.replace(config_a, fusion=dataclasses.replace(config_a.fusion, dropout=dropout))
    results = []
    for enabled in (False, True):
        tower = _loaded_tower(config, tower_weights).train()
        tower.set_gradient_checkpointing(enabled)
        visual = [v.clone().requires_grad_() for v in inputs[0]]
        hidden = inputs[1].hidden.clone().requires_grad_()
        torch.manual_seed(7)  # same dropout masks in both runs; checkpointing must replay them
        out_visual, out_text = tower(visual, TextFeatures(hidden, inputs[1].mask))
        weights = torch.Generator().manual_seed(3)
        loss = sum((v * torch.randn(v.shape, generator=weights)).sum() for v in out_visual)
        loss = loss + (out_text.hidden * torch.randn(out_text.hidden.shape, generator=weights)).sum()
        loss.backward()
        grads = {name: p.grad for name, p in tower.named_parameters()}
        grads.update({f"input.{i}": v.grad for i, v in enumerate(visual)}, **{"input.text": hidden.grad})
        results.append((out_visual + [out_text.hidden], grads))
    (plain_out, plain_grads), (ckpt_out, ckpt_grads) = results
    for a, b in zip(plain_out, ckpt_out):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], **GRAD_TOL, msg=name)
