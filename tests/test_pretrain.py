"""glip-nano's pre-training and its packaged result.

The packaged weights must load strictly into the glip-nano configuration and reproduce the zero-shot
AP their model card records; the card must be exactly what the recorded run renders; and the
pre-training loop must lower the grounding loss on a small corpus of two naming schemes.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench.catalog import Catalog
from bench.data.synthetic import ShapesWorldConfig, generate
from bench.data.dataset import DetectionDataset
from bench.data.coco_format import load_coco
from bench.models import MODELS, PACKAGED_WEIGHTS
from bench.models.glip.model import NANO_WEIGHTS
from bench.pretrain.card import CARD_FILE, RECORD_FILE, render_card, split_ap
from bench.pretrain.corpus import CORPUS_SUITE, DOWNSTREAM_SUITE, CorpusPart
from bench.pretrain.loop import PretrainConfig, part_schedule, pretrain
from bench.train.batches import TrainingPrompts
from tests.run_support import synthetic_cache

RECORD = json.loads((NANO_WEIGHTS.parent / RECORD_FILE).read_text(encoding="utf-8"))
CHECKED_DATASET = "shapes-sizes"
AP_TOLERANCE = 0.1  # AP in percent: the record keeps two decimals; summation order may differ across thread counts


def test_glip_nano_uses_its_packaged_weights_by_default():
    assert PACKAGED_WEIGHTS["glip-nano"] == NANO_WEIGHTS and NANO_WEIGHTS.is_file()
    assert NANO_WEIGHTS.stat().st_size <= 20 * 2**20


def test_packaged_weights_load_strictly_and_reproduce_the_recorded_zero_shot_ap(tmp_path_factory):
    model = MODELS.get("glip-nano")(weights=NANO_WEIGHTS)  # strict: raises on any missing or extra tensor
    random = MODELS.get("glip-nano")()
    assert not torch.equal(model.state_dict()["backbone.body.patch_embed.proj.weight"],
                           random.state_dict()["backbone.body.patch_embed.proj.weight"])
    spec = Catalog.load().dataset(CHECKED_DATASET)
    cache = synthetic_cache(tmp_path_factory, [CHECKED_DATASET])
    measured = split_ap(model, [spec], cache)[CHECKED_DATASET]
    assert measured == pytest.approx(RECORD["zero_shot_test_ap"][CHECKED_DATASET], abs=AP_TOLERANCE)


def test_the_model_card_is_what_the_recorded_run_renders():
    assert (NANO_WEIGHTS.parent / CARD_FILE).read_text(encoding="utf-8") == render_card(RECORD)
    assert RECORD["corpus"] == CORPUS_SUITE and RECORD["downstream"] == DOWNSTREAM_SUITE
    assert set(RECORD["zero_shot_test_ap"]) == set(Catalog.load().suite(DOWNSTREAM_SUITE).datasets)


def test_part_schedule_is_seeded_and_draws_every_part():
    order = part_schedule(3, 300, seed=0)
    assert order == part_schedule(3, 300, seed=0) and order != part_schedule(3, 300, seed=1)
    assert {order.count(part) for part in range(3)} <= set(range(70, 131))


def _part(root, config: ShapesWorldConfig, model, chunk_size: int | None) -> CorpusPart:
    path = generate(config, root / config.name)["train"]
    annotations = load_coco(path)
    train = DetectionDataset(annotations, path.parent)
    prompts = TrainingPrompts(train.prompt_classes(), model.tokenizer, model.text_slots, chunk_size)
    return CorpusPart(config.name, train, prompts)


def test_pretraining_lowers_the_grounding_loss(tmp_path):
    torch.manual_seed(0)
    model = MODELS.get("glip-nano")()
    splits = (("train", 12),)
    parts = [
        _part(tmp_path, ShapesWorldConfig("shape-names", seed=3, splits=splits, object_size=(20, 48)), model, None),
        _part(tmp_path, ShapesWorldConfig("colour-names", seed=4, splits=splits, scheme="colour-shape", object_size=(20, 48)),
              model, 6),
    ]
    config = PretrainConfig(steps=40, batch_size=2, lr=2e-3, warmup_steps=5, log_every=10)
    log = pretrain(model, parts, config, progress=False)
    assert [entry["step"] for entry in log] == [10, 20, 30, 40]
    assert all(entry["loss"] == pytest.approx(entry["loss_dot_product_token"] + entry["loss_reg"] + entry["loss_centerness"])
               for entry in log)
    assert log[-1]["loss"] < 0.9 * log[0]["loss"], log  # the first mean includes the warm-up
