"""A COCO-format detection dataset on disk, as a ``torch.utils.data.Dataset``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from bench.data.coco_format import HOW_TO_FIX, CocoAnnotations
from bench.data.prompts import PromptClass
from bench.data.transforms import boxes_tv
from bench.errors import DataError

MAX_LISTED_MISSING = 5
MIN_VISIBLE_FRACTION = 0.5


@dataclass(frozen=True)
class CaptionPrompt:
    """Per-class text around the class name in the caption (GLIP's ``CAPTION_PROMPT``)."""

    prefix: str = ""
    name: str | None = None
    suffix: str = ""


def image_relative_path(image: dict[str, Any]) -> str:
    """Where an image lives below the image folder.

    ``file_name`` when present; otherwise (LVIS v1 files) the last two components of ``coco_url``,
    e.g. ``val2017/000000397133.jpg``, relative to the COCO image root.
    """
    if "file_name" in image:
        return image["file_name"]
    return "/".join(image["coco_url"].split("/")[-2:])


def image_path(image_dir: Path, image: dict[str, Any]) -> Path:
    """The file of ``image`` (an ``images`` entry) in a split's image folder; the loader and the data
    check (:mod:`bench.catalog_check`) both use it, so they always look at the same file."""
    return image_dir / image_relative_path(image)


def box_placement(bbox: Sequence[float], width: float, height: float) -> str:
    """Where an xywh box (positive width and height) lies on a ``width x height`` image.

    ``"inside"``; ``"clipped"``: partly outside, with at least :data:`MIN_VISIBLE_FRACTION` of its
    area inside (trained on, clamped to the image); ``"outside"``: less than that inside (not a
    training target; the data check refuses it unless the catalog says ``invalid_boxes: drop``).
    Mostly-outside boxes are usually annotation errors, and clamping would turn them into slivers
    on the border that teach the model nothing useful.
    """
    x, y, w, h = (float(v) for v in bbox)
    inside_w = max(0.0, min(x + w, width) - max(x, 0.0))
    inside_h = max(0.0, min(y + h, height) - max(y, 0.0))
    if inside_w * inside_h < MIN_VISIBLE_FRACTION * w * h:
        return "outside"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return "clipped"
    return "inside"


class DetectionDataset(torch.utils.data.Dataset):
    """Images and boxes of one split, with the class vocabulary the prompts are built from.

    Items are ``(image, target)``: the image after ``transform`` (a PIL RGB image without one) and a
    target dict with ``boxes`` (xyxy ``BoundingBoxes``), contiguous ``labels`` (1..N), ``image_id``
    and ``original_size`` ``(h, w)``. Crowd annotations are not training targets and are left out.
    Every image file is checked for existence at construction, so a missing file is reported
    before any work starts; unreadable ones are reported when read.
    """

    def __init__(
        self,
        annotations: CocoAnnotations,
        image_dir: str | Path,
        *,
        transform: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        caption_prompts: dict[int, CaptionPrompt] | None = None,
        image_ids: Sequence[int] | None = None,
    ) -> None:
        self.annotations = annotations
        self.image_dir = Path(image_dir)
        self.transform = transform
        self.caption_prompts = caption_prompts or {}
        self.image_ids = list(image_ids) if image_ids is not None else annotations.image_ids
        self._check_images_exist()

    def _check_images_exist(self) -> None:
        if not self.image_dir.is_dir():
            raise DataError(
                f"Image folder {self.image_dir} (for {self.annotations.path}) does not exist. "
                f"Check --data-root and the dataset's catalog entry. {HOW_TO_FIX}"
            )
        paths = (image_path(self.image_dir, self.annotations.images[i]) for i in self.image_ids)
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED_MISSING])
            raise DataError(
                f"{len(missing)} of {len(self.image_ids)} images listed in {self.annotations.path} are missing "
                f"(first: {listed}). The image folder is incomplete or belongs to another version of the "
                f"dataset; obtain the images again. {HOW_TO_FIX}"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def prompt_classes(self) -> list[PromptClass]:
        """The vocabulary in label order, with caption prompts applied (name, prefix, suffix)."""
        classes = []
        for category_id, name in self.annotations.category_names().items():
            prompt = self.caption_prompts.get(category_id, CaptionPrompt())
            classes.append(
                PromptClass(
                    label=self.annotations.category_id_to_label[category_id],
                    name=prompt.name if prompt.name is not None else name,
                    prefix=prompt.prefix,
                    suffix=prompt.suffix,
                )
            )
        return sorted(classes, key=lambda c: c.label)

    def load_image(self, image_id: int) -> Image.Image:
        path = image_path(self.image_dir, self.annotations.images[image_id])
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(
                f"Image {path} (image id {image_id} in {self.annotations.path}) cannot be read: {err}. "
                f"The file is corrupt or truncated; obtain it again. {HOW_TO_FIX}"
            ) from None

    def target(self, image_id: int, height: int, width: int) -> dict[str, Any]:
        """Training targets of one image: boxes clamped to the image (GLIP's datasets clip their
        targets too, ``clip_to_image``), mostly-outside ones left out (:func:`box_placement`).
        Evaluation reads the annotations themselves (``annotations.data``), never these targets, so
        its ground truth stays the boxes of the file."""
        anns = [
            a for a in self.annotations.annotations_by_image[image_id]
            if not a["iscrowd"] and box_placement(a["bbox"], width, height) != "outside"
        ]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = torch.tensor(
            [self.annotations.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
        )
        return {
            "boxes": boxes_tv(boxes, height, width),
            "labels": labels,
            "image_id": image_id,
            "original_size": (height, width),
        }

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        target = self.target(image_id, image.height, image.width)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target
