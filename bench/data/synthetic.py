"""The synthetic "shapes" world: deterministic COCO- and LVIS-format detection datasets drawn with PIL.

Tests and the CPU demo need detection data that exists on every laptop, costs seconds to make and
can be shifted at will: a small GLIP is pre-trained on one part of the world (``shapes``) and tuned
on shifted parts (the ODinW-like ``shapes-odinw/*`` suite: new colour words, new shapes, greyscale,
clutter, textures, dense small objects), and ``shapes-lvis`` exercises the LVIS federated protocol.

Output layout of :func:`generate` for ``out_dir``::

    out_dir/manifest.json              written last; generator version + the config as JSON
    out_dir/<split>/annotations.json   COCO format (LVIS format when ``config.lvis``)
    out_dir/<split>/000001.png         RGB images; file name = zero-padded image id

The same config gives byte-identical files on every run: every random decision is drawn from
generators seeded by ``(config.seed, split, image index)``, so adding images to one split leaves
every other image unchanged, and toggling ``lvis`` changes annotations but not pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.synthetic_draw import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    ObjectRequest,
    draw_background,
    place_objects,
    to_greyscale,
)
from bench.errors import BenchError, DataError
from bench.registry import Registry

GENERATOR = "bench.data.synthetic"
# Bump whenever the same config would produce different files, so old outputs are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
SCHEMES = ("shape", "colour-shape")
SIZE_WORDS = ("small", "large")


@dataclass(frozen=True)
class ShapeCategory:
    """One category of a shapes world; ``colour``/``size`` are None when the name does not fix them."""

    id: int
    name: str
    shape: str
    colour: str | None
    size: str | None
    supercategory: str


@dataclass(frozen=True)
class ShapesWorldConfig:
    """Everything that determines a synthetic dataset; two equal configs give identical files.

    Categories are the product of ``shapes`` with ``colours`` (scheme ``"colour-shape"``: "red
    circle") or ``shapes`` alone (scheme ``"shape"``: "circle", painted in a random colour from
    ``colours``), optionally prefixed by "small"/"large" (``size_words``; small objects take the lower
    40% of ``object_size``, large ones the upper 40%). ``category_ids`` overrides the default ids
    1..N. ``long_tail`` is a Zipf exponent over a seeded shuffle of the categories (0 = uniform).
    Ranges are inclusive ``(low, high)``; ``image_size`` bounds width and height independently and
    ``object_size`` is an object's extent in pixels before rotation. One of ``backgrounds`` is drawn
    per image; ``greyscale`` converts the finished images.

    With ``lvis=True`` the files follow LVIS: categories carry ``frequency`` ("r"/"c"/"f") from the
    number of training images that contain them (r: at most ``lvis_frequency_thresholds[0]``, c: at
    most ``[1]``, f: more; LVIS uses 10 and 100 over ~100k images, so small worlds pass scaled-down
    values), images carry ``neg_category_ids`` (up to ``lvis_neg_per_image`` absent categories) and
    ``not_exhaustive_category_ids`` (each category with two or more instances, with probability
    ``lvis_not_exhaustive_prob``, loses between one and all-but-one of its annotations).
    """

    name: str
    seed: int = 0
    splits: tuple[tuple[str, int], ...] = (("train", 120), ("val", 40), ("test", 40))
    image_size: tuple[int, int] = (96, 160)
    objects_per_image: tuple[int, int] = (1, 4)
    object_size: tuple[int, int] = (16, 48)
    shapes: tuple[str, ...] = ("square", "circle", "triangle", "star", "hexagon", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    scheme: str = "shape"
    size_words: bool = False
    category_ids: tuple[int, ...] = ()
    long_tail: float = 0.0
    backgrounds: tuple[str, ...] = ("plain",)
    greyscale: bool = False
    max_rotation: float = 15.0
    min_visible: float = 0.6
    lvis: bool = False
    lvis_frequency_thresholds: tuple[int, int] = (10, 100)
    lvis_neg_per_image: int = 5
    lvis_not_exhaustive_prob: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        for field, vocabulary in (("shapes", SHAPES), ("colours", COLOURS), ("backgrounds", BACKGROUNDS)):
            values = getattr(self, field)
            unknown = [v for v in values if v not in vocabulary]
            if not values or unknown or len(set(values)) != len(values):
                problems.append(f"{field}={values!r} must be distinct names from {sorted(vocabulary)}")
        if self.scheme not in SCHEMES:
            problems.append(f"scheme={self.scheme!r} must be one of {SCHEMES}")
        for field, lowest in (("image_size", 16), ("objects_per_image", 0), ("object_size", 4)):
            low, high = getattr(self, field)
            if not lowest <= low <= high:
                problems.append(f"{field}={getattr(self, field)!r} must be (low, high) with {lowest} <= low <= high")
        if self.object_size[1] > self.image_size[0]:
            problems.append(f"object_size {self.object_size} must fit the smallest image side {self.image_size[0]}")
        names = [split for split, _ in self.splits]
        if not self.splits or len(set(names)) != len(names) or any(
            not re.fullmatch(r"[a-z0-9_]+", split) or count < 1 for split, count in self.splits
        ):
            problems.append(f"splits={self.splits!r} must be distinct (lowercase name, image count >= 1) pairs")
        n = len(self._phrases())
        if self.category_ids and (len(self.category_ids) != n or len(set(self.category_ids)) != n
                                  or min(self.category_ids) < 1):
            problems.append(f"category_ids={self.category_ids!r} must be {n} distinct positive ids, one per category")
        if not 0 < self.min_visible <= 1 or not 0 <= self.lvis_not_exhaustive_prob <= 1:
            problems.append("min_visible must be in (0, 1] and lvis_not_exhaustive_prob in [0, 1]")
        rare, common = self.lvis_frequency_thresholds
        if self.long_tail < 0 or self.lvis_neg_per_image < 0 or not 0 <= rare <= common:
            problems.append("long_tail and lvis_neg_per_image must be >= 0 and lvis_frequency_thresholds ordered")
        if problems:
            raise BenchError(
                f"Invalid shapes-world config {self.name!r}: " + "; ".join(problems) + ". Fix these fields."
            )

    def _phrases(self) -> list[tuple[str | None, str | None, str]]:
        """(size word, colour, shape) of every category, in id-assignment order."""
        sizes: tuple[str | None, ...] = SIZE_WORDS if self.size_words else (None,)
        colours: tuple[str | None, ...] = self.colours if self.scheme == "colour-shape" else (None,)
        return [(size, colour, shape) for size in sizes for colour in colours for shape in self.shapes]

    def categories(self) -> tuple[ShapeCategory, ...]:
        """The categories, ordered by size word, then colour, then shape; names join those words."""
        phrases = self._phrases()
        ids = self.category_ids or tuple(range(1, len(phrases) + 1))
        return tuple(
            ShapeCategory(cid, " ".join(w for w in (size, colour, shape) if w), shape, colour, size,
                          shape if self.scheme == "colour-shape" else "shape")
            for cid, (size, colour, shape) in zip(ids, phrases)
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (tuples become lists); :meth:`from_dict` inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapesWorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BenchError(f"Unknown shapes-world config keys {unknown}; valid keys are {sorted(known)}.")

        def tupled(value: Any) -> Any:
            return tuple(tupled(v) for v in value) if isinstance(value, list) else value

        return cls(**{key: tupled(value) for key, value in data.items()})


def _derive_seed(*parts: object) -> int:
    """A 64-bit seed from labelled parts, stable across processes (unlike ``hash``) and machines."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def _category_weights(config: ShapesWorldConfig, n: int) -> list[float]:
    """Zipf weights over a seeded ranking of the ``n`` categories (uniform when ``long_tail`` is 0)."""
    ranks = list(range(n))
    random.Random(_derive_seed(config.seed, "long-tail")).shuffle(ranks)
    return [1.0 / (rank + 1) ** config.long_tail for rank in ranks]


def _size_range(config: ShapesWorldConfig, size_word: str | None) -> tuple[float, float]:
    low, high = config.object_size
    span = high - low
    if size_word == "small":
        return low, low + 0.4 * span
    if size_word == "large":
        return low + 0.6 * span, high
    return low, high


_Object = tuple[ShapeCategory, tuple[int, int, int, int], int]  # category, visible bbox xywh, area


def _render_image(config: ShapesWorldConfig, categories: tuple[ShapeCategory, ...], weights: list[float],
                  split: str, index: int) -> tuple[np.ndarray, list[_Object]]:
    """Draw image ``index`` of ``split``: a ``[H, W, 3]`` uint8 array and its objects."""
    rng = random.Random(_derive_seed(config.seed, "image", split, index))
    np_rng = np.random.default_rng(_derive_seed(config.seed, "pixels", split, index))
    width, height = rng.randint(*config.image_size), rng.randint(*config.image_size)
    canvas = draw_background(rng.choice(config.backgrounds), width, height, rng, np_rng)
    chosen = rng.choices(categories, weights, k=rng.randint(*config.objects_per_image))
    requests = [
        ObjectRequest(c.shape, COLOURS[c.colour or rng.choice(config.colours)], _size_range(config, c.size))
        for c in chosen
    ]
    drawn = place_objects(canvas, requests, rng, config.max_rotation, config.min_visible)
    if config.greyscale:
        canvas = to_greyscale(canvas)
    return canvas, [(chosen[d.request], d.bbox, d.area) for d in drawn]


def _lvis_labels(config: ShapesWorldConfig, category_ids: list[int], split: str, index: int,
                 objects: list[_Object]) -> tuple[list[_Object], list[int], list[int]]:
    """Apply LVIS's federated labelling to one image: kept objects, negative and not-exhaustive ids.

    Drops are real (the pixels stay, the annotations go), so evaluators that ignore
    ``not_exhaustive_category_ids`` are penalised exactly as on LVIS. A separate seed keeps the
    image's pixels independent of this step.
    """
    rng = random.Random(_derive_seed(config.seed, "lvis", split, index))
    by_category: dict[int, list[int]] = {}
    for position, (category, _, _) in enumerate(objects):
        by_category.setdefault(category.id, []).append(position)
    dropped: set[int] = set()
    not_exhaustive = []
    for category_id, positions in sorted(by_category.items()):
        if len(positions) >= 2 and rng.random() < config.lvis_not_exhaustive_prob:
            not_exhaustive.append(category_id)
            dropped.update(rng.sample(positions, rng.randint(1, len(positions) - 1)))
    absent = [cid for cid in category_ids if cid not in by_category]
    negatives = sorted(rng.sample(absent, min(config.lvis_neg_per_image, len(absent))))
    kept = [obj for position, obj in enumerate(objects) if position not in dropped]
    return kept, negatives, not_exhaustive


def _lvis_frequency(config: ShapesWorldConfig, image_count: int) -> str:
    """LVIS's rule on training-image counts; a category no training image shows counts as rare."""
    rare, common = config.lvis_frequency_thresholds
    return "r" if image_count <= rare else "c" if image_count <= common else "f"


def _write_dataset(config: ShapesWorldConfig, root: Path) -> None:
    """Write every split's images and annotation file under ``root``."""
    categories = config.categories()
    category_ids = [c.id for c in categories]
    weights = _category_weights(config, len(categories))
    splits: dict[str, tuple[list[dict[str, Any]], list[list[_Object]]]] = {}
    for split, count in config.splits:
        (root / split).mkdir()
        images, objects = [], []
        for index in range(count):
            canvas, drawn = _render_image(config, categories, weights, split, index)
            record: dict[str, Any] = {"id": index + 1, "file_name": f"{index + 1:06d}.png",
                                      "width": int(canvas.shape[1]), "height": int(canvas.shape[0])}
            if config.lvis:
                drawn, negatives, not_exhaustive = _lvis_labels(config, category_ids, split, index, drawn)
                record.update(neg_category_ids=negatives, not_exhaustive_category_ids=not_exhaustive)
            Image.fromarray(canvas).save(root / split / record["file_name"])
            images.append(record)
            objects.append(drawn)
        splits[split] = (images, objects)

    records = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in categories]
    if config.lvis:
        # LVIS defines frequencies on the training split; without a "train" split, the first one.
        train = splits.get("train", next(iter(splits.values())))[1]
        for record in records:
            per_image = [sum(obj[0].id == record["id"] for obj in image) for image in train]
            image_count = sum(n > 0 for n in per_image)
            record.update(image_count=image_count, instance_count=sum(per_image),
                          frequency=_lvis_frequency(config, image_count))

    for split, (images, objects) in splits.items():
        annotations = []
        for image, drawn in zip(images, objects):
            for category, bbox, area in drawn:
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                    "category_id": category.id, "bbox": list(bbox), "area": area, "iscrowd": 0})
        data = {"info": {"description": f"synthetic shapes world {config.name!r}, split {split!r}",
                         "version": GENERATOR_VERSION},
                "images": images, "annotations": annotations, "categories": records}
        _write_json(root / split / ANNOTATIONS, data)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def _manifest(config: ShapesWorldConfig) -> dict[str, Any]:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "config": config.to_dict(),
            "splits": {split: f"{split}/{ANNOTATIONS}" for split, _ in config.splits}}


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(out_dir: Path, config: ShapesWorldConfig) -> bool:
    """True when ``out_dir`` holds a finished generation of exactly ``config`` by this version."""
    return _read_manifest(out_dir) == _manifest(config) and all(
        (out_dir / split / ANNOTATIONS).is_file() for split, _ in config.splits
    )


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory this generator did not write, since replacing deletes it."""
    if not out_dir.exists():
        return
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest.get("generator") == GENERATOR:
        return
    ours = re.compile(r"\d{6}\.png|" + re.escape(ANNOTATIONS))
    foreign = [out_dir] if not out_dir.is_dir() else [
        path for path in sorted(out_dir.iterdir())
        if not path.is_dir() or any(not ours.fullmatch(p.name) for p in path.iterdir())
    ]
    if foreign:
        raise DataError(
            f"{out_dir} exists but was not written by the shapes generator (it holds e.g. {foreign[0]}). "
            f"Generation replaces its output directory as a whole; pass a new or empty directory, or delete "
            f"{out_dir} yourself if its contents are disposable."
        )


def generate(config: ShapesWorldConfig, out_dir: Path) -> dict[str, Path]:
    """Generate the dataset ``config`` describes under ``out_dir``; returns ``{split: annotations path}``.

    Idempotent and crash-safe: everything, the manifest last, is written to a temporary sibling
    directory that then replaces ``out_dir`` by rename. A directory whose manifest matches is reused
    untouched; one with another config, an older generator version or no manifest (an interrupted
    copy) is regenerated. ``.<name>.partial-*`` siblings are staging directories of interrupted (or
    running) calls and are never read. Concurrent calls for the same config are safe: whoever
    finishes second keeps the first one's identical output.
    """
    out_dir = Path(out_dir)
    paths = {split: out_dir / split / ANNOTATIONS for split, _ in config.splits}
    if _is_complete(out_dir, config):
        return paths
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    retired = staging.with_name(staging.name.replace(".partial-", ".retired-"))
    try:
        _write_dataset(config, staging)
        _write_json(staging / MANIFEST, _manifest(config))
        if _is_complete(out_dir, config):  # a concurrent call finished first; keep its output in place
            return paths
        if out_dir.exists():
            try:
                os.rename(out_dir, retired)
            except FileNotFoundError:  # a concurrent call retired it first
                pass
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not _is_complete(out_dir, config):  # another process may have just finished the same
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return paths


# --- presets ---------------------------------------------------------------------------------------

# Presets register here with a one-line description for ``--list``; PRESETS is the plain mapping.
PRESET_REGISTRY: Registry[ShapesWorldConfig] = Registry("synthetic dataset")
_ODINW_SPLITS = (("train", 50), ("val", 20), ("test", 20))


def _add(config: ShapesWorldConfig, description: str) -> None:
    PRESET_REGISTRY.add(config.name, config, description)


_add(ShapesWorldConfig("shapes", seed=1, backgrounds=("plain", "noise"), category_ids=(1, 3, 7, 8, 12, 20)),
     "6 shapes in random colours, plain and noisy backgrounds; non-contiguous category ids")
# LVIS's 10/100-image thresholds assume ~100k training images and would call every category here
# rare; 5/20 over these 150 training images splits the 30 categories into r/c/f about as LVIS v1 does.
_add(ShapesWorldConfig("shapes-lvis", seed=2, splits=(("train", 150), ("val", 25), ("test", 25)),
                       objects_per_image=(3, 8), object_size=(14, 36), scheme="colour-shape",
                       colours=("red", "green", "blue", "yellow", "purple"), long_tail=1.3,
                       backgrounds=("plain", "gradient"), lvis=True, lvis_frequency_thresholds=(5, 20)),
     "LVIS format: 30 colour+shape categories with a long tail, negative and not-exhaustive labels")
_add(ShapesWorldConfig("shapes-odinw/colours", seed=11, splits=_ODINW_SPLITS, scheme="colour-shape",
                       shapes=("circle", "square"), colours=("pink", "brown", "cyan", "teal"),
                       backgrounds=("plain", "noise")),
     "new colour words on known shapes")
_add(ShapesWorldConfig("shapes-odinw/greyscale", seed=12, splits=_ODINW_SPLITS,
                       shapes=("circle", "square", "triangle", "star"),
                       colours=("red", "green", "blue", "purple", "brown", "black"),
                       backgrounds=("plain", "gradient", "noise"), greyscale=True),
     "known shapes in greyscale images")
_add(ShapesWorldConfig("shapes-odinw/dense", seed=13, splits=_ODINW_SPLITS, image_size=(128, 160),
                       objects_per_image=(8, 20), object_size=(8, 18), shapes=("circle", "square", "star")),
     "many small objects per image")
_add(ShapesWorldConfig("shapes-odinw/clutter", seed=14, splits=_ODINW_SPLITS, shapes=("arrow", "crescent", "bar"),
                       backgrounds=("clutter",)),
     "new shapes among distractor scribbles")
_add(ShapesWorldConfig("shapes-odinw/textures", seed=15, splits=_ODINW_SPLITS,
                       shapes=("ring", "diamond", "pentagon", "semicircle"),
                       backgrounds=("stripes", "gradient", "noise")),
     "new shapes on striped, graded and noisy backgrounds")
_add(ShapesWorldConfig("shapes-odinw/sizes", seed=16, splits=_ODINW_SPLITS, object_size=(10, 56),
                       shapes=("circle", "triangle", "hexagon"), size_words=True, backgrounds=("plain", "noise")),
     "size words: small and large variants of known shapes are different categories")

# The pre-training corpus of glip-nano (bench/pretrain): the base vocabulary only (6 shapes, 6 colours,
# 2 size words) on plain and noisy backgrounds, in three naming schemes so that shape, colour and
# size words are each grounded. Everything the shapes-odinw suite adds stays out: its new colour and
# shape words, greyscale, dense tiny objects, clutter, stripes and gradients.
_PRETRAIN_SPLITS = (("train", 2000), ("val", 40), ("test", 40))
_PRETRAIN_COMMON = dict(splits=_PRETRAIN_SPLITS, objects_per_image=(1, 6), object_size=(10, 56),
                        backgrounds=("plain", "noise"))
_add(ShapesWorldConfig("shapes-pretrain/shapes", seed=21, **_PRETRAIN_COMMON),
     "pre-training: the 6 base shapes named by shape, painted in the 6 base colours")
_add(ShapesWorldConfig("shapes-pretrain/colours", seed=22, scheme="colour-shape", **_PRETRAIN_COMMON),
     "pre-training: 36 colour+shape phrases over the base shapes and colours")
_add(ShapesWorldConfig("shapes-pretrain/sizes", seed=23, size_words=True, **_PRETRAIN_COMMON),
     "pre-training: small and large variants of the base shapes")

PRESETS: dict[str, ShapesWorldConfig] = {entry.name: entry.obj for entry in PRESET_REGISTRY}
SHAPES_ODINW: tuple[str, ...] = tuple(name for name in PRESETS if name.startswith("shapes-odinw/"))
SHAPES_PRETRAIN: tuple[str, ...] = tuple(name for name in PRESETS if name.startswith("shapes-pretrain/"))


def preset(name: str) -> ShapesWorldConfig:
    """The preset config called ``name``; unknown names raise UnknownNameError listing the valid ones."""
    return PRESET_REGISTRY.get(name)
