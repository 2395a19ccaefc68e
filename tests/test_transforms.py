"""Pre-processing against the official GLIP code (fixture A) and box bookkeeping."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from bench.data.transforms import (
    GlipResize,
    PixelNormalization,
    boxes_to_original,
    boxes_tv,
    eval_transform,
    glip_resize_hw,
    pad_batch,
    train_transform,
)

# GLIP's pixel convention (microsoft/GLIP configs/pretrain/glip_Swin_T_O365_GoldG.yaml, INPUT.PIXEL_MEAN and
# INPUT.PIXEL_STD; INPUT.TO_BGR255 in maskrcnn_benchmark/config/defaults.py): BGR, 0..255, these means and stds.
GLIP_PIXELS = PixelNormalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="BGR", value_scale=255.0)
FIXTURE_MIN_SIZE, FIXTURE_MAX_SIZE = 160, 256


@pytest.fixture(scope="module")
def fixture_a(fixture_a_dir, fixture_a_summary, fixture_a_reference):
    return {
        "image": Image.open(fixture_a_dir / "image_0.png").convert("RGB"),
        "summary": fixture_a_summary,
        "reference": fixture_a_reference,
    }


def _gt_target(fixture_a):
    gt = fixture_a["summary"]["gt_orig"][0]
    boxes = torch.tensor([g["box"] for g in gt])
    w, h = fixture_a["image"].size
    return {"boxes": boxes_tv(boxes, h, w), "labels": torch.tensor([g["label"] for g in gt])}


@pytest.mark.parametrize(
    "size, min_size, max_size, expected_hw",
    [
        ((200, 152), 160, 256, (160, 210)),  # fixture A: long side truncated, 210.5 -> 210
        ((640, 480), 800, 1333, (800, 1066)),  # COCO-like: 1066.67 truncated
        ((2000, 500), 800, 1333, (333, 1332)),  # capped: short = round(1333*500/2000) = 333, long int(1332.0)
        ((480, 640), 800, 1333, (1066, 800)),  # portrait
        ((800, 600), 600, 1333, (600, 800)),  # already at size: unchanged
    ],
)
def test_glip_resize_rule(size, min_size, max_size, expected_hw):
    assert glip_resize_hw(*size, min_size, max_size) == expected_hw


def test_eval_preprocessing_matches_official(fixture_a):
    reference = fixture_a["reference"]
    image, target = eval_transform(GLIP_PIXELS, FIXTURE_MIN_SIZE, FIXTURE_MAX_SIZE)(fixture_a["image"], _gt_target(fixture_a))
    expected = reference["input.image0_preprocessed"]
    assert image.shape == expected.shape
    torch.testing.assert_close(image, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), reference["train.target0.boxes_resized_xyxy"])


def test_padded_batch_matches_official(fixture_a):
    reference = fixture_a["reference"]
    batch, sizes = pad_batch([reference["input.image0_preprocessed"]])
    assert torch.equal(batch, reference["input.images_padded"])
    assert torch.equal(sizes, reference["input.image_sizes_hw"])


def test_pad_batch_of_different_sizes():
    a, b = torch.ones(3, 40, 70), 2 * torch.ones(3, 65, 33)
    batch, sizes = pad_batch([a, b])
    assert batch.shape == (2, 3, 96, 96)
    assert sizes.tolist() == [[40, 70], [65, 33]]
    assert batch[0, :, :40, :70].eq(1).all() and batch[0, :, 40:].eq(0).all() and batch[0, :, :, 70:].eq(0).all()
    assert batch[1, :, :65, :33].eq(2).all() and batch[1, :, 65:].eq(0).all()


def test_normalization_is_bgr_times_255():
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    out = GLIP_PIXELS(rgb).flatten()
    expected = torch.tensor([(255.0 - 103.53) / 57.375, (127.5 - 116.28) / 57.12, (0.0 - 123.675) / 58.395])
    torch.testing.assert_close(out, expected)


def test_boxes_back_to_original_coordinates(fixture_a):
    reference = fixture_a["reference"]
    orig = torch.tensor([g["box"] for g in fixture_a["summary"]["gt_orig"][0]])
    back = boxes_to_original(reference["train.target0.boxes_resized_xyxy"], (160, 210), (152, 200))
    torch.testing.assert_close(back, orig, atol=1e-4, rtol=0)


def test_train_transform_flips_boxes_with_pixels():
    image = Image.new("RGB", (100, 50))
    image.paste((255, 0, 0), (10, 5, 30, 25))  # red block at x 10..30, y 5..25
    target = {"boxes": boxes_tv(torch.tensor([[10.0, 5.0, 30.0, 25.0]]), 50, 100), "labels": torch.tensor([1])}
    plain = PixelNormalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out, flipped = train_transform(plain, min_sizes=(50,), max_size=None, flip_prob=1.0)(image, target)
    box = flipped["boxes"].as_subclass(torch.Tensor)[0].tolist()
    assert box == pytest.approx([70.0, 5.0, 90.0, 25.0])
    assert out[0, 10:20, 72:88].eq(1).all() and out[0, 10:20, 12:28].eq(0).all()


def test_multiscale_resize_uses_every_scale():
    rng = random.Random(0)
    resize = GlipResize((20, 30, 40), None, rng)
    image = Image.new("RGB", (80, 40))
    heights = {resize(image, {})[0].height for _ in range(60)}
    assert heights == {20, 30, 40}
