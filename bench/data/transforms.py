"""Image and box transforms, as GLIP applies them (microsoft/GLIP maskrcnn_benchmark/data/transforms/build.py
and transforms.py).

* Resize: the short side goes to ``min_size`` (one of several during training) unless the long side
  would then exceed ``max_size``; sizes are truncated with ``int()``, as in GLIP, and resizing runs on
  PIL images so the pixels match GLIP's PIL bilinear resize.
* Pixel normalisation belongs to the model (GLIP wants BGR in 0..255; other detectors want RGB in
  0..1), so it is a :class:`PixelNormalization` value the model provides, applied last.
* Batching pads every image bottom/right with zeros to a shared size divisible by 32.

Boxes travel with the images as ``torchvision.tv_tensors.BoundingBoxes`` inside the target dict, so
``torchvision.transforms.v2`` resizes and flips them together with the pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

GLIP_TEST_MIN_SIZE = 800
GLIP_TEST_MAX_SIZE = 1333
GLIP_TRAIN_MIN_SIZES = (480, 560, 640, 720, 800)
GLIP_SIZE_DIVISIBILITY = 32


def glip_resize_hw(width: int, height: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(height, width)`` of GLIP's resize for an image of ``width x height``.

    Short side -> ``min_size``, shrunk (with rounding) if the long side would exceed ``max_size``; the
    long side is then truncated with ``int()``, not rounded (a parity quirk).
    """
    size = min_size
    if max_size is not None:
        short, long = min(width, height), max(width, height)
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class GlipResize:
    """Resize an image and its target boxes with GLIP's rule; picks one of ``min_sizes`` per call."""

    def __init__(self, min_sizes: Sequence[int], max_size: int | None, rng: random.Random | None = None) -> None:
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        self.rng = rng or random.Random()

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        width, height = F.get_size(image)[::-1]
        min_size = self.min_sizes[0] if len(self.min_sizes) == 1 else self.rng.choice(self.min_sizes)
        size = list(glip_resize_hw(width, height, min_size, self.max_size))
        target = dict(target)
        if "boxes" in target:
            target["boxes"] = F.resize(target["boxes"], size)
        return F.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR), target


class RandomHorizontalFlip:
    """Flip an image and its boxes with probability ``prob``, drawing from ``rng``.

    torchvision's own flip draws from torch's global generator; an explicit ``random.Random`` lets
    the trainer derive every sample's augmentation from (seed, epoch, position), so a resumed run
    sees exactly the images an uninterrupted one would.
    """

    def __init__(self, prob: float, rng: random.Random | None = None) -> None:
        self.prob = prob
        self.rng = rng or random.Random()

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.rng.random() >= self.prob:
            return image, target
        target = dict(target)
        if "boxes" in target:
            target["boxes"] = F.horizontal_flip(target["boxes"])
        return F.horizontal_flip(image), target


@dataclass(frozen=True)
class PixelNormalization:
    """How a model wants its pixels: channel order, value scale, and per-channel mean/std.

    ``mean``/``std`` are given in the model's channel order and value scale (GLIP: BGR, 0..255).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    value_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: float ``[3, H, W]`` RGB in 0..1 -> normalised tensor in the model's convention."""
        if self.channel_order == "BGR":
            image = image.flip(0)
        image = image * self.value_scale
        mean = torch.tensor(self.mean, dtype=image.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(3, 1, 1)
        return (image - mean) / std


class Normalize:
    """Converts a (PIL or tensor) image to float and applies a model's :class:`PixelNormalization`."""

    def __init__(self, pixels: PixelNormalization) -> None:
        self.pixels = pixels
        self.to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.pixels(self.to_float(image).as_subclass(torch.Tensor)), target


def eval_transform(
    pixels: PixelNormalization, min_size: int = GLIP_TEST_MIN_SIZE, max_size: int | None = GLIP_TEST_MAX_SIZE
) -> v2.Compose:
    """GLIP's test-time pipeline: one fixed resize, then the model's normalisation."""
    return v2.Compose([GlipResize((min_size,), max_size), Normalize(pixels)])


def train_transform(
    pixels: PixelNormalization,
    min_sizes: Sequence[int] = GLIP_TRAIN_MIN_SIZES,
    max_size: int | None = GLIP_TEST_MAX_SIZE,
    flip_prob: float = 0.5,
    rng: random.Random | None = None,
) -> v2.Compose:
    """GLIP's fine-tuning augmentation: multi-scale resize and horizontal flip (boxes follow).

    Both random choices come from ``rng`` (a fresh unseeded one when omitted).
    """
    rng = rng or random.Random()
    steps: list[Any] = [GlipResize(min_sizes, max_size, rng)]
    if flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob, rng))
    steps.append(Normalize(pixels))
    return v2.Compose(steps)


def pad_batch(images: Sequence[torch.Tensor], size_divisibility: int = GLIP_SIZE_DIVISIBILITY) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``[3, H_i, W_i]`` images bottom/right into one ``[B, 3, Hp, Wp]`` batch.

    ``Hp``/``Wp`` are the largest height/width rounded up to a multiple of ``size_divisibility``.
    Returns the batch and the un-padded sizes ``[B, 2]`` as ``(h, w)``, which anchors and box
    clipping need. No padding mask is produced: GLIP lets padded pixels take part in fusion.
    """
    if not images:
        raise ValueError("pad_batch needs at least one image")
    heights = [img.shape[-2] for img in images]
    widths = [img.shape[-1] for img in images]
    div = max(size_divisibility, 1)
    padded_h = int(math.ceil(max(heights) / div) * div)
    padded_w = int(math.ceil(max(widths) / div) * div)
    batch = images[0].new_zeros((len(images), images[0].shape[0], padded_h, padded_w))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    sizes = torch.tensor(list(zip(heights, widths)), dtype=torch.int64)
    return batch, sizes


def boxes_to_original(boxes: torch.Tensor, resized_hw: Sequence[int], original_hw: Sequence[int]) -> torch.Tensor:
    """Map ``[N, 4]`` xyxy boxes from the resized image back to the original one (per-axis ratio)."""
    ratio_h = original_hw[0] / resized_hw[0]
    ratio_w = original_hw[1] / resized_hw[1]
    scale = boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    return boxes * scale


def boxes_tv(boxes_xyxy: torch.Tensor, height: int, width: int) -> tv_tensors.BoundingBoxes:
    """Wrap xyxy boxes of an image of ``height x width`` so v2 transforms move them with the pixels."""
    return tv_tensors.BoundingBoxes(boxes_xyxy, format="XYXY", canvas_size=(height, width))
