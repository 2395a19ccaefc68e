"""The synthetic shapes world: valid COCO/LVIS files, tight boxes, determinism, safe regeneration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.data.synthetic import (
    PRESETS,
    SHAPES_ODINW,
    SHAPES_PRETRAIN,
    ShapesWorldConfig,
    generate,
    preset,
)
from bench.data.synthetic_draw import BACKGROUNDS, COLOURS, SHAPES
from bench.errors import BenchError, DataError, UnknownNameError

SMALL_SPLITS = (("train", 6), ("val", 3))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def pixels(annotations_path: Path, image: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(annotations_path.parent / image["file_name"]).convert("RGB"))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Every preset, generated once for the structural checks (the pre-training corpus cut to 30 images a split)."""
    root = tmp_path_factory.mktemp("worlds")
    small = {name: dataclasses.replace(PRESETS[name], splits=tuple((split, 30) for split, _ in PRESETS[name].splits))
             for name in SHAPES_PRETRAIN}
    return {name: generate(small.get(name, config), root / name) for name, config in PRESETS.items()}


def test_200_image_preset_generates_every_image_and_file(tmp_path: Path) -> None:
    paths = generate(preset("shapes"), tmp_path / "shapes")
    assert set(paths) == {"train", "val", "test"}
    total = 0
    for split, path in paths.items():
        data = load(path)
        assert path == tmp_path / "shapes" / split / "annotations.json"
        assert [img["id"] for img in data["images"]] == list(range(1, len(data["images"]) + 1))
        assert sorted(p.name for p in path.parent.glob("*.png")) == [img["file_name"] for img in data["images"]]
        for img in data["images"]:
            assert img["file_name"] == f"{img['id']:06d}.png"
            with Image.open(path.parent / img["file_name"]) as im:
                assert (im.mode, im.size) == ("RGB", (img["width"], img["height"]))
            assert 96 <= img["width"] <= 160 and 96 <= img["height"] <= 160
        total += len(data["images"])
    assert total == 200
    assert load(tmp_path / "shapes" / "manifest.json")["config"] == preset("shapes").to_dict()


@pytest.mark.parametrize("name", ["shapes-lvis", "shapes-odinw/textures", "shapes-odinw/clutter"])
def test_generation_is_byte_identical(worlds: dict[str, dict[str, Path]], tmp_path: Path, name: str) -> None:
    first = worlds[name]["train"].parent.parent
    generate(preset(name), tmp_path / "again")
    assert tree_bytes(tmp_path / "again") == tree_bytes(first)


def test_output_matches_the_pinned_digest(tmp_path: Path) -> None:
    """Catches drawing changes made without bumping GENERATOR_VERSION (and platform drift).

    Cached datasets are reused whenever the manifest matches, so a change in what a config draws must
    come with a new GENERATOR_VERSION; then update the digest here.
    """
    config = ShapesWorldConfig("digest", seed=5, splits=(("train", 6),), backgrounds=BACKGROUNDS,
                               scheme="colour-shape", colours=("red", "blue"), lvis=True)
    path = generate(config, tmp_path / "digest")["train"]
    digest = hashlib.sha256(path.read_bytes())
    for img in load(path)["images"]:
        digest.update(pixels(path, img).tobytes())
    assert digest.hexdigest()[:16] == "7a4415f6bd1de0cb"


def test_ids_are_consistent_and_boxes_lie_inside_their_images(worlds: dict[str, dict[str, Path]]) -> None:
    for name, paths in worlds.items():
        config = preset(name)
        for split, path in paths.items():
            data = load(path)
            images = {img["id"]: img for img in data["images"]}
            category_ids = [c["id"] for c in data["categories"]]
            assert category_ids == [c.id for c in config.categories()], name
            assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
            for ann in data["annotations"]:
                assert ann["category_id"] in category_ids and ann["image_id"] in images
                assert ann["iscrowd"] == 0
                x, y, w, h = ann["bbox"]
                img = images[ann["image_id"]]
                assert x >= 0 and y >= 0 and w >= 1 and h >= 1, (name, split, ann)
                assert x + w <= img["width"] and y + h <= img["height"], (name, split, ann)
                assert 0 < ann["area"] <= w * h
            per_image = Counter(a["image_id"] for a in data["annotations"])
            assert max(per_image.values()) <= config.objects_per_image[1]


def test_colour_phrase_boxes_touch_their_colour_on_all_four_sides(worlds: dict[str, dict[str, Path]]) -> None:
    """Boxes are those of the visible pixels, so each border row and column shows the object."""
    for name in ("shapes-lvis", "shapes-odinw/colours"):
        colour_of = {c.id: np.array(COLOURS[c.colour]) for c in preset(name).categories()}
        path = worlds[name]["train"]
        data = load(path)
        images = {img["id"]: pixels(path, img) for img in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            is_colour = (images[ann["image_id"]][y:y + h, x:x + w] == colour_of[ann["category_id"]]).all(axis=2)
            assert is_colour[0].any() and is_colour[-1].any() and is_colour[:, 0].any() and is_colour[:, -1].any()


def test_isolated_objects_have_tight_boxes(tmp_path: Path) -> None:
    config = ShapesWorldConfig("isolated", seed=3, splits=(("train", 40),), objects_per_image=(1, 1),
                               scheme="colour-shape", shapes=tuple(SHAPES), colours=("red", "blue"))
    path = generate(config, tmp_path / "isolated")["train"]
    data = load(path)
    colour_of = {c.id: np.array(COLOURS[c.colour]) for c in config.categories()}
    assert len(data["annotations"]) == len(data["images"])
    for ann, img in zip(data["annotations"], data["images"]):
        assert ann["image_id"] == img["id"]
        x, y, w, h = ann["bbox"]
        is_colour = (pixels(path, img) == colour_of[ann["category_id"]]).all(axis=2)
        inside = is_colour[y:y + h, x:x + w]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert inside.sum() == ann["area"] == is_colour.sum()  # nothing of its colour outside the box


def test_shapes_preset_has_non_contiguous_category_ids() -> None:
    ids = [c.id for c in preset("shapes").categories()]
    assert ids != list(range(1, len(ids) + 1)) and len(set(ids)) == len(ids) == 6


def test_category_names_are_plain_lowercase_words() -> None:
    for name, config in PRESETS.items():
        names = [c.name for c in config.categories()]
        assert len(set(names)) == len(names), name
        assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", n) for n in names), names


def test_odinw_suite_varies_vocabulary_and_domain(worlds: dict[str, dict[str, Path]]) -> None:
    assert len(SHAPES_ODINW) >= 5
    vocabularies = {frozenset(c.name for c in preset(name).categories()) for name in SHAPES_ODINW}
    domains = {(preset(name).backgrounds, preset(name).greyscale) for name in SHAPES_ODINW}
    assert len(vocabularies) == len(SHAPES_ODINW) and len(domains) >= 4
    path = worlds["shapes-odinw/greyscale"]["test"]
    for img in load(path)["images"]:
        rgb = pixels(path, img)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    for name in SHAPES_ODINW:
        assert {split: count for split, count in preset(name).splits} == {"train": 50, "val": 20, "test": 20}


def test_lvis_variant_labels_are_consistent(worlds: dict[str, dict[str, Path]]) -> None:
    config = preset("shapes-lvis")
    rare, common = config.lvis_frequency_thresholds
    train = load(worlds["shapes-lvis"]["train"])
    images_with = Counter(cid for cid, _ in {(a["category_id"], a["image_id"]) for a in train["annotations"]})
    instances = Counter(a["category_id"] for a in train["annotations"])
    assert len(train["categories"]) == 30
    assert {c["frequency"] for c in train["categories"]} == {"r", "c", "f"}
    for cat in train["categories"]:
        assert cat["image_count"] == images_with[cat["id"]] and cat["instance_count"] == instances[cat["id"]]
        expected = "r" if cat["image_count"] <= rare else "c" if cat["image_count"] <= common else "f"
        assert cat["frequency"] == expected
    category_ids = {c["id"] for c in train["categories"]}
    for split, path in worlds["shapes-lvis"].items():
        data = load(path)
        assert data["categories"] == train["categories"]  # frequencies come from train for every split
        annotated = {img["id"]: set() for img in data["images"]}
        for ann in data["annotations"]:
            annotated[ann["image_id"]].add(ann["category_id"])
        for img in data["images"]:
            assert "coco_url" not in img
            assert set(img["neg_category_ids"]) <= category_ids - annotated[img["id"]]
            assert set(img["not_exhaustive_category_ids"]) <= annotated[img["id"]]
    assert sum(bool(img["not_exhaustive_category_ids"]) for img in train["images"]) >= 10
    assert all(img["neg_category_ids"] for img in train["images"])


def test_not_exhaustive_categories_really_lose_annotations(tmp_path: Path) -> None:
    lvis = dataclasses.replace(preset("shapes-lvis"), splits=(("train", 30),))
    lvis_path = generate(lvis, tmp_path / "lvis")["train"]
    coco_path = generate(dataclasses.replace(lvis, lvis=False), tmp_path / "coco")["train"]
    lvis_data, coco_data = load(lvis_path), load(coco_path)
    assert "frequency" not in coco_data["categories"][0] and "neg_category_ids" not in coco_data["images"][0]
    lost = 0
    for img in lvis_data["images"]:
        assert (pixels(lvis_path, img) == pixels(coco_path, img)).all()  # labelling never changes pixels
        kept, full = (
            Counter((a["category_id"], tuple(a["bbox"])) for a in data["annotations"] if a["image_id"] == img["id"])
            for data in (lvis_data, coco_data)
        )
        assert kept <= full
        per_category = Counter(cid for cid, _ in (full - kept).elements())
        assert set(per_category) == set(img["not_exhaustive_category_ids"])
        lost += sum(per_category.values())
    assert lost > 0


def test_matching_manifest_skips_and_changed_config_regenerates(tmp_path: Path) -> None:
    config = dataclasses.replace(preset("shapes"), splits=SMALL_SPLITS)
    out = tmp_path / "data"
    paths = generate(config, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate(config, out) == paths
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    changed = dataclasses.replace(config, seed=config.seed + 1, splits=(("train", 4),))
    new_paths = generate(changed, out)
    assert set(new_paths) == {"train"} and not (out / "val").exists()
    assert load(out / "manifest.json")["config"]["seed"] == config.seed + 1
    assert len(load(new_paths["train"])["images"]) == 4
    reference = tmp_path / "reference"
    generate(changed, reference)
    assert tree_bytes(out) == tree_bytes(reference)


def test_interrupted_generation_is_regenerated(tmp_path: Path) -> None:
    config = dataclasses.replace(preset("shapes"), splits=SMALL_SPLITS)
    reference = tmp_path / "reference"
    generate(config, reference)

    out = tmp_path / "data"
    stale = tmp_path / ".data.partial-crashed"  # a staging dir from a killed run: never read
    (stale / "train").mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps({"config": config.to_dict()}))
    (out / "train").mkdir(parents=True)  # an incomplete copy without manifest
    (out / "train" / "000001.png").write_bytes(b"truncated")
    generate(config, out)
    assert tree_bytes(out) == tree_bytes(reference)

    (out / "val" / "annotations.json").unlink()  # manifest present but a split is missing
    generate(config, out)
    assert tree_bytes(out) == tree_bytes(reference)
    assert not list(tmp_path.glob(".data.retired-*")) and list(tmp_path.glob(".data.partial-*")) == [stale]


def test_concurrent_generations_of_one_config_agree(tmp_path: Path) -> None:
    config = dataclasses.replace(preset("shapes-odinw/clutter"), splits=SMALL_SPLITS)
    generate(config, tmp_path / "reference")
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: generate(config, tmp_path / "data"), range(3)))
    assert all(paths == results[0] for paths in results)
    assert tree_bytes(tmp_path / "data") == tree_bytes(tmp_path / "reference")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "reference"]  # no staging dir left behind


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by the shapes generator"):
        generate(dataclasses.replace(preset("shapes"), splits=SMALL_SPLITS), out)
    assert (out / "notes.txt").read_text() == "mine"


def test_unknown_preset_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        preset("shapes-lvsi")
    assert "shapes-lvis" in str(err.value) and "shapes-odinw/dense" in str(err.value)


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    for config in PRESETS.values():
        assert ShapesWorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(BenchError, match="shapes="):
        ShapesWorldConfig("bad", shapes=("circle", "blob"))
    with pytest.raises(BenchError, match="category_ids"):
        ShapesWorldConfig("bad", category_ids=(1, 2, 3))
    with pytest.raises(BenchError, match="object_size"):
        ShapesWorldConfig("bad", image_size=(32, 64), object_size=(8, 48))


def test_generated_files_pass_the_coco_loader(worlds: dict[str, dict[str, Path]]) -> None:
    from bench.data.coco_format import load_coco

    for paths in worlds.values():
        for path in paths.values():
            annotations = load_coco(path)
            assert not annotations.skipped_annotations


def test_pretraining_corpus_leaves_out_the_downstream_shifts() -> None:
    corpus = [preset(name) for name in SHAPES_PRETRAIN]
    corpus_words = {word for config in corpus for c in config.categories() for word in c.name.split()}
    painted = {colour for config in corpus for colour in config.colours}
    held_out = {"shapes-odinw/colours": preset("shapes-odinw/colours").colours,
                "shapes-odinw/clutter": preset("shapes-odinw/clutter").shapes,
                "shapes-odinw/textures": preset("shapes-odinw/textures").shapes}
    for name, words in held_out.items():
        assert not set(words) & (corpus_words | painted), f"{name}'s new words appear in the corpus"
    assert {b for config in corpus for b in config.backgrounds} == {"plain", "noise"}
    assert not any(config.greyscale for config in corpus)
    assert min(config.object_size[0] for config in corpus) > preset("shapes-odinw/dense").object_size[0]
