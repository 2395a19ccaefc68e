"""Few-shot sampling: GLIP's deterministic walk, seeded variants, prepared split files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.data.coco_format import load_coco, validate_coco
from bench.data.fewshot import few_shot_subset, prepared_split_path, sample_k_shot
from bench.errors import BenchError
from tests.data_factory import coco_dict, write_dataset


def _dataset(image_categories: dict[int, list[int]], categories=(1, 2, 3)):
    """Images with the given category id per box (one box per entry)."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in image_categories],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [],
    }
    for image_id, cats in image_categories.items():
        for c in cats:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": c, "bbox": [0, 0, 5, 5]})
    return validate_coco(data, Path("<memory>"))


def test_glip_sampler_walks_sorted_ids_and_counts_images():
    # Image ids are given out of order on purpose: GLIP walks them sorted.
    coco = _dataset({5: [1, 1, 1], 1: [1], 2: [2], 3: [1, 2], 4: [3], 6: [2, 3], 7: [3]})
    # k=1: 1 (c1), 2 (c2), 3 skipped (c1, c2 done), 4 (c3), then nothing is needed.
    assert sample_k_shot(coco, 1) == [1, 2, 4]
    # k=2: 1, 2, 3 (both still need one), 4 (c3), 5 skipped (c1 has 2 images), 6 (c3 needs one more).
    assert sample_k_shot(coco, 2) == [1, 2, 3, 4, 6]


def test_instance_counting_credits_every_box():
    coco = _dataset({1: [1, 1, 1], 2: [1], 3: [2]}, categories=(1, 2))
    assert sample_k_shot(coco, 3, unit="instance") == [1, 3]
    assert sample_k_shot(coco, 3, unit="image") == [1, 2, 3]


def _random_coco(seed: int = 0, images: int = 120):
    import random

    rng = random.Random(seed)
    cats = {i: [rng.choice((1, 2, 3, 4, 5, 6)) for _ in range(rng.randint(0, 4))] for i in range(1, images + 1)}
    cats[images + 1] = [7]  # a rare class with a single box in the whole set
    return _dataset(cats, categories=(1, 2, 3, 4, 5, 6, 7))


@pytest.mark.parametrize("unit", ["image", "instance"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_seeded_sampler_reaches_k_where_the_data_allows(k, unit):
    coco = _random_coco()
    picked = sample_k_shot(coco, k, seed=30, unit=unit)
    counts: Counter[int] = Counter()
    for image_id in picked:
        cats = [a["category_id"] for a in coco.annotations_by_image[image_id]]
        counts.update(cats if unit == "instance" else set(cats))
    for category in range(1, 7):
        assert counts[category] >= k
    assert counts[7] == 1  # only one example exists
    assert len(set(picked)) == len(picked)
    assert all(coco.annotations_by_image[i] for i in picked)


def test_seeded_sampler_is_deterministic_per_seed_and_varies_across_seeds():
    coco = _random_coco()
    assert sample_k_shot(coco, 3, seed=3) == sample_k_shot(coco, 3, seed=3)
    assert sample_k_shot(coco, 3, seed=3) != sample_k_shot(coco, 3, seed=300)


def test_bad_arguments_are_explained():
    coco = _random_coco()
    with pytest.raises(BenchError, match="at least 1"):
        sample_k_shot(coco, 0)
    with pytest.raises(BenchError, match="valid units: image, instance"):
        sample_k_shot(coco, 1, unit="box")


def test_prepared_split_file_wins_when_present(tmp_path):
    full = load_coco(write_dataset(tmp_path, coco_dict(images=6), with_images=False))
    prepared = coco_dict(images=6)
    prepared["images"] = prepared["images"][4:]
    prepared["annotations"] = [a for a in prepared["annotations"] if a["image_id"] > 4]
    prepared_split_path(tmp_path, 1, 30).write_text(json.dumps(prepared))
    assert few_shot_subset(full, 1, 30, split_dir=tmp_path).image_ids == [5, 6]
    # No file for seed 3: sampled instead.
    assert few_shot_subset(full, 1, 3, split_dir=tmp_path).image_ids == sorted(sample_k_shot(full, 1, 3))
