"""Datasets whose validation file is their test file get validation held out of their training images
when a sweep selects on validation, never test images (bench.data.holdout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.catalog import load_split_annotations
from bench.data.fewshot import few_shot_subset
from bench.data.holdout import DECLARED, HELD_OUT, HELD_OUT_FRACTION, held_out_image_ids, split_off_validation
from bench.runs.cell import training_and_validation
from bench.runs.plan import plan_cells, prepare
from bench.runs.tuning import TuneRequest, trial_cells
from tests.run_support import TINY_PROTOCOL, quiet_context, synthetic_cache, tiny_request

SHARED = "shapes-colours-shared"
CATALOG = f"""\
datasets:
  {SHARED}:
    description: shapes-colours with one annotation file for validation and test, like ODinW's PascalVOC.
    generator: shapes-odinw/colours
    root: synthetic/shapes-odinw/colours
    chunk_size: 4
    splits:
      train: {{images: train, annotations: train/annotations.json}}
      val: {{images: test, annotations: test/annotations.json}}
      test: {{images: test, annotations: test/annotations.json}}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory, ["shapes-colours"])


@pytest.fixture
def context(cache, tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "shared.yaml").write_text(CATALOG)
    return quiet_context(tmp_path / "results", cache, catalog_dir=folder)


def train_annotations(context):
    return load_split_annotations(context.catalog().dataset(SHARED), "train", None, context.cache_dir)


def test_full_data_loses_a_fixed_fifth_of_its_training_images_to_validation(context):
    train = train_annotations(context)
    training, validation = split_off_validation(train)
    assert len(validation.images) == round(HELD_OUT_FRACTION * len(train.images))
    assert set(training.images).isdisjoint(validation.images)
    assert set(training.images) | set(validation.images) == set(train.images)
    assert split_off_validation(train)[1].images.keys() == validation.images.keys()  # one rule, every call


def test_a_few_shot_sample_is_kept_whole_and_validation_comes_from_the_other_training_images(context):
    train = train_annotations(context)
    sample = few_shot_subset(train, 1, 3)
    training, validation = split_off_validation(train, sample)
    assert training is sample
    assert set(validation.images).isdisjoint(sample.images)
    assert set(validation.images) <= set(train.images)
    assert len(validation.images) == round(HELD_OUT_FRACTION * len(train.images))


def test_too_few_training_images_for_a_held_out_split_is_one_paragraph(context):
    train = train_annotations(context)
    one = train.subset(train.image_ids[:1])
    with pytest.raises(Exception) as error:
        held_out_image_ids(one)
    assert "selection=last" in str(error.value) and str(train.path) in str(error.value)


def test_best_val_selection_holds_validation_out_and_the_rule_is_in_the_key(context):
    best_val = plan_cells(tiny_request(["sdpt"], [SHARED], protocol_overrides={**TINY_PROTOCOL, "selection": "best-val"}), context)
    last = plan_cells(tiny_request(["sdpt"], [SHARED], protocol_overrides={**TINY_PROTOCOL, "selection": "last"}), context)
    assert [c.spec.validation for c in best_val] == [HELD_OUT]
    assert [c.spec.validation for c in last] == [DECLARED]
    untouched = plan_cells(tiny_request(["sdpt"], ["shapes-colours"], protocol_overrides={**TINY_PROTOCOL, "selection": "best-val"}), context)
    assert [c.spec.validation for c in untouched] == [DECLARED]
    assert best_val[0].key != last[0].key


def test_tuning_holds_validation_out_even_when_the_final_weights_are_scored(context):
    request = tiny_request(["sdpt"], [SHARED], protocol_overrides={**TINY_PROTOCOL, "selection": "last"})
    trials = trial_cells(prepare(request, context, tuned=True), TuneRequest(("lr",), 2))
    assert trials and {c.spec.validation for c in trials} == {HELD_OUT}


def test_a_cell_trains_without_its_held_out_images_and_validates_on_them(context):
    cell, = plan_cells(tiny_request(["sdpt"], [SHARED], protocol_overrides={**TINY_PROTOCOL, "selection": "best-val"}), context)
    dataset = context.catalog().dataset(SHARED)
    training, validation = training_and_validation(dataset, cell.spec, context)
    test_ids = set(load_split_annotations(dataset, "test", None, context.cache_dir).images)
    assert set(training.image_ids).isdisjoint(validation.image_ids)
    assert Path(validation.image_dir) == Path(training.image_dir)  # validation images are training images
    assert len(validation.image_ids) > 0 and len(test_ids) > 0


def test_a_held_out_cell_runs_and_its_record_says_where_validation_came_from(context):
    from bench.runs.cell import run_cell

    cell, = plan_cells(tiny_request(["linear-probe"], [SHARED], protocol_overrides={**TINY_PROTOCOL, "selection": "best-val"}), context)
    record = run_cell(cell, context)
    assert record.spec.validation == HELD_OUT
    assert context.store.read_result(cell.key).spec.validation == HELD_OUT
    assert record.val["AP"] == record.val["AP"] and record.test["AP"] == record.test["AP"]  # both scored (not NaN)
