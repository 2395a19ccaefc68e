"""The Grounding DINO backend: parity with plain ``transformers``, its loss, detections, text slots and loading."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GroundingDinoForObjectDetection, MMGroundingDinoForObjectDetection
from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss

import methods  # noqa: F401  (registers every method)
from bench.data.coco_format import load_coco
from bench.data.dataset import DetectionDataset
from bench.data.prompts import Prompt, PromptClass, build_prompts
from bench.data.synthetic import ShapesWorldConfig, generate
from bench.errors import BenchError
from bench.models import MODELS, ModelInputs, check_model_inputs
from bench.launch.local import run_local
from bench.models.grounding_dino import config as gd_config
from bench.models.grounding_dino import model as gd_model
from bench.models.grounding_dino.model import GroundingDino, grounding_dino_on_config, load_grounding_dino
from bench.models.grounding_dino.postprocess import select_detections
from bench.runs.plan import plan_cells
from bench.train.batches import TrainingPrompts, training_loader
from bench.tuning.base import METHODS, build_method
from tests.grounding_dino_support import TINY_INPUTS, tiny_config, tiny_task, tiny_tokenizer, warmed_up_weights
from tests.run_support import quiet_context, synthetic_cache, tiny_request
from tests.training_support import train_steps

SHAPES_STEPS = 30


def _inputs(model: GroundingDino, prompt: Prompt, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a plain ``transformers`` user passes for the same images and caption."""
    tokens = model.tokenizer([prompt.caption] * images.shape[0], padding="longest", return_tensors="pt")
    pixel_mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
    for i, (h, w) in enumerate(sizes.tolist()):
        pixel_mask[i, :h, :w] = 1
    return {"pixel_values": images, "pixel_mask": pixel_mask, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def test_with_empty_slots_the_outputs_are_exactly_those_of_plain_transformers(grounding_dino_factory):
    model = grounding_dino_factory()
    plain = GroundingDinoForObjectDetection(model.hf.config).eval()
    plain.load_state_dict(model.hf.state_dict(), strict=False)  # the wrapper dropped Swin's unused final norm
    images, sizes, _, prompt = tiny_task(model)
    images, sizes = torch.cat([images, images.flip(-1)]), torch.cat([sizes, sizes])
    with torch.no_grad():
        ours = model.predict(images, sizes, [prompt, prompt])
        theirs = plain(**_inputs(model, prompt, images, sizes))
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.pred_boxes, theirs.pred_boxes)


def test_decoder_loss_from_positive_maps_equals_the_transformers_loss_of_plain_phrases(grounding_dino_factory):
    model = grounding_dino_factory().train()
    plain = copy.deepcopy(model.hf)
    plain.loss_function = GroundingDinoForObjectDetectionLoss  # transformers' own: class tokens from the ids
    plain.config.auxiliary_loss = True  # ours always adds the earlier decoder layer's loss
    images, sizes, targets, prompt = tiny_task(model)
    ours = model(images, sizes, prompt, targets)["loss_decoder"]
    h, w = sizes[0].tolist()
    boxes = targets[0]["boxes"]
    cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
                          (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], dim=1)
    phrase = {label: i for i, label in enumerate(prompt.labels)}
    labels = [{"class_labels": torch.tensor([phrase[int(l)] for l in targets[0]["labels"]]), "boxes": cxcywh}]
    terms = plain(**_inputs(model, prompt, images, sizes), labels=labels).loss_dict
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}  # transformers' weights; "_0": first decoder layer
    theirs = sum(weights[k.removesuffix("_0")] * v for k, v in terms.items() if k.removesuffix("_0") in weights)
    assert {k for k in terms if k.endswith("_0")} == {"loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0"}
    assert torch.allclose(ours, theirs, rtol=1e-5), (ours, theirs)


def test_the_proposal_loss_trains_the_proposal_layers_as_the_official_recipe_does(grounding_dino_factory):
    model = grounding_dino_factory().train()
    images, sizes, targets, prompt = tiny_task(model)
    build_method("full", {"freeze_vision_stages": -1}).apply(model)
    losses = model(images, sizes, prompt, targets)
    losses["loss_proposals"].backward()
    proposal_layers = model.hf.model
    for layer in (proposal_layers.enc_output, proposal_layers.enc_output_norm, proposal_layers.encoder_output_bbox_embed.layers[2]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert model.hf.model.decoder.bbox_embed[0].layers[0].weight.grad is None  # the decoder is not in this term


def test_a_batch_without_boxes_gives_a_zero_loss_that_backpropagates(grounding_dino_factory):
    model = grounding_dino_factory().train()
    images, sizes, _, prompt = tiny_task(model)
    loss = sum(model(images, sizes, prompt, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]).values())
    loss.backward()
    assert float(loss.detach()) == 0.0
    gradient = model.hf.model.text_projection.weight.grad
    assert gradient is not None and not gradient.any()


def test_detections_average_each_class_tokens_and_scale_boxes_to_the_image():
    # Caption "[CLS] red square . circle . [SEP]": label 1 owns tokens 1-2, label 2 token 4.
    prompt = Prompt("red square . circle .", (1, 2), {1: (0, 10), 2: (13, 19)}, {1: [1, 2], 2: [4]}, 7)
    probs = torch.full((1, 2, 8), 0.01)
    probs[0, 0, [1, 2]] = torch.tensor([0.9, 0.5])  # query 0: class 1 scores (0.9 + 0.5) / 2 = 0.7
    probs[0, 1, 4] = 0.8  # query 1: class 2 scores 0.8
    logits = torch.logit(probs)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]])  # cx, cy, w, h of the image
    found = select_detections(logits, boxes, torch.tensor([[40, 80]]), [prompt], detections_per_image=2)[0]
    assert found.labels.tolist() == [2, 1] and found.labels.dtype == torch.long
    unlocated = Prompt("red square .", (1,), {1: (0, 10)}, {}, 5, unlocated=(1,))
    nothing = select_detections(logits, boxes, torch.tensor([[40, 80]]), [unlocated], detections_per_image=2)[0]
    assert nothing.labels.dtype == torch.long and len(nothing.labels) == 0
    assert torch.allclose(found.scores, torch.tensor([0.8, 0.7]))
    assert torch.allclose(found.boxes, torch.tensor([[0.0, 0.0, 40.0, 20.0], [20.0, 10.0, 60.0, 30.0]]))


def test_images_too_small_for_the_proposal_count_are_explained(grounding_dino_factory):
    model = grounding_dino_factory()
    # 64x96 with patch 4: strides 8, 16, 32 and 64 give 8*12 + 4*6 + 2*3 + 1*2 = 128 positions.
    assert model.encoder_positions(64, 96) == 128
    _, _, _, prompt = tiny_task(model)
    model.hf.config.num_queries = 129
    with pytest.raises(BenchError, match="give the encoder 128 positions, fewer than the 129 proposals"):
        model.predict(torch.zeros(1, 3, 64, 96), torch.tensor([[64, 96]]), [prompt])


def test_chunked_detection_scores_every_chunk_with_its_own_labels(grounding_dino_factory):
    model = grounding_dino_factory()
    images, sizes, _, _ = tiny_task(model)
    classes = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]
    chunks = build_prompts(classes, model.tokenizer, chunk_size=2, style=model.prompt_style, max_query_len=model.text_slots)
    assert [c.caption for c in chunks] == ["red square . blue circle .", "green triangle ."]
    found = model.detect(images, sizes, chunks)[0]
    assert set(found.labels.tolist()) == {1, 2, 3}
    assert len(found.labels) == 20 * 2 + 20  # the top (query, class) pairs of each chunk: all of them here


def test_inserted_context_is_seen_by_every_phrase_while_phrases_stay_apart(grounding_dino_factory):
    """CoOp's context tokens condition every class name in BERT; one class name still cannot see another."""
    model = grounding_dino_factory()
    images, sizes, _, prompt = tiny_task(model)
    other = build_prompts([PromptClass(1, "red square"), PromptClass(2, "yellow circle"), PromptClass(3, "green triangle")],
                          model.tokenizer, style=model.prompt_style, max_query_len=model.text_slots)[0]
    assert other.label_to_tokens == prompt.label_to_tokens  # only the word of class 2 differs
    captured = []
    model.hf.model.text_backbone.register_forward_hook(lambda _m, _i, out: captured.append(out.last_hidden_state))
    with torch.no_grad():
        model.predict(images, sizes, [prompt])
        build_method("coop", {"context_tokens": 3}).apply(model)
        model.predict(images, sizes, [prompt])
        model.predict(images, sizes, [other])
    plain, with_context, other_class_2 = captured
    first = [t + 3 for t in prompt.label_to_tokens[1]]
    assert not torch.allclose(with_context[0, first], plain[0, prompt.label_to_tokens[1]], atol=1e-4)
    assert torch.allclose(with_context[0, first], other_class_2[0, first], atol=1e-6)


def test_sdpt_uses_vision_proj_and_text_proj_of_every_fusion_layer(grounding_dino_factory):
    model = grounding_dino_factory()
    build_method("sdpt", {"num_tokens": 5}).apply(model)
    for layer in model.fusion_layers():
        extension = layer.token_extension
        assert extension._projections == (layer.vision_proj, layer.text_proj)
        assert torch.equal(extension.pinv_v, torch.linalg.pinv(layer.vision_proj.weight.float().t()))
        assert extension.prototype_tokens.shape == (5, layer.embed_dim)


def test_vision_prompts_change_the_swin_output_and_keep_its_shapes(grounding_dino_factory):
    model = grounding_dino_factory()
    images, _, _, _ = tiny_task(model)
    pixel_mask = torch.ones(1, *images.shape[-2:], dtype=torch.long)
    backbone = model.hf.model.backbone.conv_encoder
    with torch.no_grad():
        before = [f for f, _ in backbone(images, pixel_mask)]
        build_method("vpt", {"num_tokens": 4}).apply(model)
        after = [f for f, _ in backbone(images, pixel_mask)]
    assert [f.shape for f in before] == [f.shape for f in after]
    assert all(not torch.allclose(a, b) for a, b in zip(before, after))


# ----------------------------------------------------------------------------- loading
def test_loading_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(BenchError, match="huggingface-cli download IDEA-Research/grounding-dino-tiny --local-dir grounding-dino-t"):
        MODELS.get("grounding-dino-t")()
    with pytest.raises(BenchError, match="has no readable config.json.*huggingface-cli download IDEA-Research/grounding-dino-base"):
        load_grounding_dino("grounding-dino", "b", weights=tmp_path / "missing")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BenchError, match="is a file, not a from_pretrained folder.*mm_grounding_dino_tiny"):
        load_grounding_dino("mm-grounding-dino", "t", weights=tmp_path / "model.safetensors")


@pytest.fixture()
def saved_tiny(grounding_dino_factory, tmp_path) -> tuple[GroundingDino, str]:
    model = grounding_dino_factory()
    folder = tmp_path / "tiny"
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return model, str(folder)


def test_a_folder_of_another_size_is_refused_naming_what_it_holds(saved_tiny, monkeypatch):
    _, folder = saved_tiny
    with pytest.raises(BenchError, match="holds no released grounding-dino size .*, not grounding-dino-t"):
        load_grounding_dino("grounding-dino", "t", weights=folder)
    monkeypatch.setitem(gd_config.SWIN_SHAPES, "b", gd_config.swin_shape_of(GroundingDinoForObjectDetection.config_class.from_pretrained(folder)))
    with pytest.raises(BenchError, match="holds grounding-dino-b .*, not grounding-dino-t; pass the grounding-dino-t folder or --model grounding-dino-b"):
        load_grounding_dino("grounding-dino", "t", weights=folder)


def test_a_saved_folder_loads_offline_and_predicts_what_was_saved(saved_tiny, monkeypatch):
    model, folder = saved_tiny
    monkeypatch.setitem(gd_config.SWIN_SHAPES, "t", gd_config.swin_shape_of(model.hf.config))
    loaded = load_grounding_dino("grounding-dino", "t", weights=folder)
    images, sizes, _, prompt = tiny_task(model)
    with torch.no_grad():
        assert torch.equal(model.predict(images, sizes, [prompt]).logits, loaded.predict(images, sizes, [prompt]).logits)


def test_a_folder_of_the_other_family_is_refused(saved_tiny, monkeypatch):
    model, folder = saved_tiny
    monkeypatch.setitem(gd_config.SWIN_SHAPES, "t", gd_config.swin_shape_of(model.hf.config))
    with pytest.raises(BenchError, match="holds grounding-dino-t .*, not mm-grounding-dino-t; pass the mm-grounding-dino-t folder or --model grounding-dino-t"):
        load_grounding_dino("mm-grounding-dino", "t", weights=folder)
    path = f"{folder}/config.json"
    config = json.loads(open(path).read())
    config["model_type"] = "owlv2"
    open(path, "w").write(json.dumps(config))
    with pytest.raises(BenchError, match="holds a 'owlv2' model, not one of grounding-dino, mm-grounding-dino"):
        load_grounding_dino("grounding-dino", "t", weights=folder)


def test_the_pre_sweep_check_passes_a_saved_folder_and_refuses_a_file_of_another_architecture(saved_tiny, monkeypatch):
    model, folder = saved_tiny
    monkeypatch.setitem(gd_config.SWIN_SHAPES, "t", gd_config.swin_shape_of(model.hf.config))
    check_model_inputs("grounding-dino-t", ModelInputs(weights=folder))
    with pytest.raises(BenchError, match="reads its tokenizer from its --weights folder"):
        check_model_inputs("grounding-dino-t", ModelInputs(weights=folder, tokenizer=folder))
    tensors = load_file(f"{folder}/model.safetensors")
    name = sorted(k for k in tensors if k.endswith("bias"))[0]
    save_file({k: v for k, v in tensors.items() if k != name}, f"{folder}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BenchError, match="do not match grounding-dino-t: 4 missing keys, e.g. bbox_embed"):
        check_model_inputs("grounding-dino-t", ModelInputs(weights=folder))


def test_a_sweep_runs_grounding_dino_from_its_folder_end_to_end(saved_tiny, monkeypatch, tmp_path_factory):
    """``--model grounding-dino-t --weights DIR`` through planning, training, evaluation and the result store."""
    model, folder = saved_tiny
    monkeypatch.setitem(gd_config.SWIN_SHAPES, "t", gd_config.swin_shape_of(model.hf.config))
    monkeypatch.setattr(gd_model, "GROUNDING_DINO_INPUTS", TINY_INPUTS)  # CPU-sized images
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    context = quiet_context(tmp_path_factory.mktemp("gd-sweep"), cache)
    request = tiny_request(["zero-shot", "sdpt"], ["shapes-colours"], method_options={"sdpt": {"num_tokens": 4}})
    request = dataclasses.replace(request, model="grounding-dino-t", weights=folder)
    cells = plan_cells(request, context)
    outcome = run_local(cells, context)
    assert outcome.failed == {} and len(outcome.finished) == 2
    records = {r.spec.method: r for r in context.store.load_records()[0]}
    for record in records.values():
        assert record.spec.model == "grounding-dino-t"
        assert all(0.0 <= record.test[k] <= 1.0 for k in ("AP", "AP50"))
    assert records["sdpt"].cost.trainable_params == 4 * 32 * 2  # K x E per fusion layer of the tiny model


# ----------------------------------------------------------------------------- training on shapes
@pytest.fixture(scope="module")
def shapes_batch(grounding_dino_factory, tmp_path_factory):
    """One training batch (four images, augmented as in training) of a small synthetic shapes world."""
    world = ShapesWorldConfig("gd-shapes", seed=5, splits=(("train", 16),), scheme="colour-shape",
                              colours=("red", "green", "blue"), shapes=("square", "circle", "triangle"), object_size=(24, 48))
    path = generate(world, tmp_path_factory.mktemp("gd-shapes"))["train"]
    train = DetectionDataset(load_coco(path), path.parent)
    model = grounding_dino_factory()
    prompts = TrainingPrompts(train.prompt_classes(), model.tokenizer, model.text_slots, None, model.prompt_style)
    loader = training_loader(train, model.input_spec, prompts, batch_size=4, copies=1, seed=0, start_batch=0, num_batches=1)
    return next(iter(loader))


@pytest.mark.parametrize("name", ["sdpt", "vpt", "coop", "lora"])
def test_a_short_run_on_synthetic_shapes_lowers_the_loss(name, grounding_dino_factory, shapes_batch):
    """Each method, at its default learning rate, fits one batch of shapes: the loss falls (dropout is off)."""
    torch.manual_seed(0)
    model = grounding_dino_factory()
    method = build_method(name)
    trainable = method.apply(model)
    batch = shapes_batch
    losses = train_steps(model, trainable, batch.images, batch.sizes, batch.prompts, batch.targets, steps=SHAPES_STEPS, lr=method.config.lr)
    assert sum(losses[-3:]) / 3 < 0.97 * losses[0], losses


# ----------------------------------------------------------------------------- MM-Grounding-DINO
@pytest.fixture(scope="module")
def mm_factory(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("mm_tokenizer"))
    weights = warmed_up_weights(tokenizer, "mm-grounding-dino")

    def build() -> GroundingDino:
        model = grounding_dino_on_config(tiny_config(len(tokenizer), "mm-grounding-dino"), tokenizer, TINY_INPUTS)  # fresh config
        model.load_state_dict(weights)
        return model.eval()

    return build


def test_mm_grounding_dino_with_empty_slots_is_plain_transformers(mm_factory):
    model = mm_factory()
    assert type(model.hf) is MMGroundingDinoForObjectDetection and len(model.fusion_layers()) == 2
    plain = MMGroundingDinoForObjectDetection(model.hf.config).eval()
    plain.load_state_dict(model.hf.state_dict(), strict=False)
    images, sizes, _, prompt = tiny_task(model)
    with torch.no_grad():
        ours, theirs = model.predict(images, sizes, [prompt]), plain(**_inputs(model, prompt, images, sizes))
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.pred_boxes, theirs.pred_boxes)


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_trains_mm_grounding_dino_as_declared(name, mm_factory):
    """The first two contract checks on MM-Grounding-DINO: the declared count trains, nothing else moves."""
    torch.manual_seed(0)
    model = mm_factory()
    method = build_method(name)
    trainable = method.apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    if not trainable:
        return
    trained = {id(p) for p in trainable.values()}
    before = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in trained}
    images, sizes, targets, prompt = tiny_task(model)
    losses = train_steps(model, trainable, images, sizes, prompt, targets, steps=2, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
