"""The assembled GLIP: official key layout at full size, checkpoint round trips, batching, chunking."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.data.prompts import PromptClass, build_prompt, build_prompts
from bench.data.transforms import pad_batch
from bench.errors import BenchError
from bench.models.base import PARAMETER_GROUPS
from bench.models.glip.checkpoint import as_official_checkpoint, load_official_checkpoint
from bench.models.glip.config import GLIP_L, GLIP_T, from_reduced_config
from bench.models.glip.language import load_tokenizer
from bench.models.glip.model import GLIP

FIXTURE_CLASSES = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]
IGNORED_OFFICIAL = ("rpn.anchor_generator.cell_anchors.", "rpn.head.cls_logits.")


def read_manifest(path):
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype, _kind = line.split("\t")
        rows[key.removeprefix("module.")] = (tuple(int(x) for x in shape.strip("[]").split(",") if x.strip()), _kind)
    return rows


@pytest.mark.parametrize("config, manifest, total", [(GLIP_T, "glip_manifest_T.tsv", 231_780_222), (GLIP_L, "glip_manifest_L.tsv", 430_422_384)])
def test_full_size_state_dict_equals_official_manifest(config, manifest, total, fixtures_dir):
    official = read_manifest(fixtures_dir / manifest)
    with torch.device("meta"):
        model = GLIP(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: shape for k, (shape, _) in official.items() if not k.startswith(IGNORED_OFFICIAL)}
    assert ours == expected
    unused = sum(torch.Size(shape).numel() for k, (shape, kind) in official.items() if kind == "param" and k.startswith(IGNORED_OFFICIAL))
    assert sum(p.numel() for p in model.parameters()) + unused == total


@pytest.fixture(scope="module")
def fixture_config(fixture_a_dir):
    return from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")


@pytest.fixture(scope="module")
def tokenizer(fixture_a_dir):
    return load_tokenizer(fixture_a_dir / "bert_local")


@pytest.fixture()
def model_a(fixture_config, tokenizer, fixture_a_dir):
    model = GLIP(fixture_config, tokenizer)
    load_official_checkpoint(model, fixture_a_dir / "glip_reduced_A.pth")
    return model.eval()


def test_random_official_format_checkpoint_round_trips(fixture_config, tokenizer, fixture_a_reference, tmp_path):
    torch.manual_seed(0)
    source = GLIP(fixture_config, tokenizer).eval()
    checkpoint = as_official_checkpoint(source)
    checkpoint["model"]["module.rpn.head.cls_logits.weight"] = torch.zeros(80, 64, 1, 1)
    checkpoint["model"]["module.rpn.head.cls_logits.bias"] = torch.zeros(80)
    path = tmp_path / "random.pth"
    torch.save(checkpoint, path)
    target = GLIP(fixture_config, tokenizer).eval()
    report = load_official_checkpoint(target, path)
    assert report.loaded == len(source.state_dict())
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    images, sizes = fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"]
    with torch.no_grad():
        a, b = source(images, sizes, prompt)[0], target(images, sizes, prompt)[0]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes)


def test_checkpoint_of_another_configuration_is_refused(fixture_config, tokenizer, fixture_a_dir):
    wider = dataclasses.replace(fixture_config, fusion=dataclasses.replace(fixture_config.fusion, embed_dim=256))
    with pytest.raises(BenchError) as info:
        load_official_checkpoint(GLIP(wider, tokenizer), fixture_a_dir / "glip_reduced_A.pth")
    message = str(info.value)
    assert "v_proj.weight (file (128, 64), model (256, 64))" in message
    assert "--model" in message


def test_parameter_groups_partition_the_model(model_a):
    groups = model_a.parameter_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    names = [n for group in groups.values() for n in group]
    assert sorted(names) == sorted(n for n, _ in model_a.named_parameters())
    assert all(".b_attn." in n for n in groups["fusion"])
    assert len(model_a.fusion_layers()) == 2 and len(model_a.vision_blocks()) == 8


def test_batch_with_a_smaller_image_keeps_the_first_image_result(model_a, tokenizer, fixture_a_reference):
    image = fixture_a_reference["input.image0_preprocessed"]
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    solo_batch, solo_sizes = pad_batch([image])
    pair_batch, pair_sizes = pad_batch([image, image[:, :96, :130]])
    assert pair_batch.shape[1:] == solo_batch.shape[1:]  # the padded size is set by the first image
    with torch.no_grad():
        solo = model_a(solo_batch, solo_sizes, prompt)[0]
        pair = model_a(pair_batch, pair_sizes, prompt)
    torch.testing.assert_close(pair[0].scores, solo.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(pair[0].boxes, solo.boxes, atol=1e-3, rtol=0)
    assert (pair[1].boxes[:, 2] <= 129).all() and (pair[1].boxes[:, 3] <= 95).all()  # clipped to its own size


def test_chunked_detection_merges_labels_of_every_chunk(model_a, tokenizer, fixture_a_reference):
    images, sizes = fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"]
    chunks = build_prompts(FIXTURE_CLASSES, tokenizer, chunk_size=2)
    merged = model_a.detect(images, sizes, chunks)[0]
    with torch.no_grad():
        separate = [model_a(images, sizes, chunk)[0] for chunk in chunks]
    assert set(merged.labels.tolist()) == {1, 2, 3}
    assert torch.equal(merged.scores, torch.cat([d.scores for d in separate]))
    assert torch.equal(merged.labels, torch.cat([d.labels for d in separate]))


def test_training_forward_returns_the_three_losses_and_reaches_every_group(model_a, tokenizer, fixture_a_reference):
    model_a.train()
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    targets = [{"boxes": fixture_a_reference["train.target0.boxes_resized_xyxy"], "labels": fixture_a_reference["train.target0.labels"]}]
    losses = model_a(fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"], prompt, targets)
    assert set(losses) == {"loss_dot_product_token", "loss_reg", "loss_centerness"}
    sum(losses.values()).backward()
    grads = dict(model_a.named_parameters())
    for group, names in model_a.parameter_groups().items():
        assert any(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in names), group


def test_text_feature_offset_slot_moves_the_text(model_a, tokenizer):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    with torch.no_grad():
        before = model_a.encode_text([prompt]).features.hidden

        class Shift(torch.nn.Module):
            def forward(self, hidden):
                return hidden + 1.0

        model_a.text_feature_offset = Shift()
        after = model_a.encode_text([prompt]).features.hidden
    torch.testing.assert_close(after, before + 1.0)


def test_bf16_autocast_forward_is_finite(model_a, tokenizer, fixture_a_reference):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        found = model_a(fixture_a_reference["input.images_padded"], fixture_a_reference["input.image_sizes_hw"], prompt)[0]
    assert len(found.scores) > 0 and torch.isfinite(found.boxes).all() and torch.isfinite(found.scores).all()
