"""The YAML dataset catalog: what it declares, and how it refuses bad entries and missing data."""

from __future__ import annotations

import pytest

from bench.catalog import Catalog, load_split_annotations, open_split, require_data
from bench.errors import BenchError, DataError, UnknownNameError
from tests.data_factory import coco_dict, write_dataset


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_odinw13_declares_the_thirteen_datasets(catalog):
    suite = catalog.suite("odinw13")
    assert len(suite.datasets) == 13 and suite.aggregation == "mean"
    egohands = catalog.dataset("odinw-egohands")
    assert egohands.split("val").images == "mini_val"
    assert catalog.dataset("odinw-pascalvoc").split("test") == catalog.dataset("odinw-pascalvoc").split("val")
    assert catalog.dataset("odinw-aquarium").category_names[7] == "stingray"
    assert catalog.dataset("odinw-pistols").split("train").annotations == "train_annotations_without_background.json"


def test_lvis_is_chunked_and_scored_with_fixed_ap(catalog):
    spec = catalog.dataset("lvis-minival")
    assert spec.chunk_size == 40 and spec.detections_per_image == 300
    assert spec.evaluator == "lvis" and spec.evaluator_options["fixed_ap"] is True


def test_unknown_names_suggest_the_closest(catalog):
    with pytest.raises(UnknownNameError, match="Did you mean 'odinw13' or 'odinw35'"):
        catalog.suite("odinw")
    with pytest.raises(UnknownNameError, match="Did you mean 'odinw-aquarium'"):
        catalog.dataset("odinw-aquarim")


def test_resolve_combines_suite_and_datasets_without_repeats(catalog):
    names = [s.name for s in catalog.resolve("coco", ["lvis-minival", "coco"])]
    assert names == ["coco", "lvis-minival"]
    with pytest.raises(BenchError, match="No datasets selected"):
        catalog.resolve(None, [])


def _write_catalog(tmp_path, text: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mine.yaml").write_text(text)
    return tmp_path


def test_catalog_entry_with_unknown_key_is_refused(tmp_path):
    directory = _write_catalog(tmp_path, "datasets:\n  d:\n    root: x\n    splits: {}\n    colour: red\n")
    with pytest.raises(BenchError, match=r"dataset 'd' has unknown key\(s\) \['colour'\]"):
        Catalog.load(directory)


def test_suite_with_undeclared_dataset_is_refused(tmp_path):
    directory = _write_catalog(tmp_path, "suite: {name: s, datasets: [ghost]}\n")
    with pytest.raises(BenchError, match="lists dataset 'ghost'"):
        Catalog.load(directory)


def test_invalid_yaml_names_the_file(tmp_path):
    directory = _write_catalog(tmp_path, "datasets: [unclosed\n")
    with pytest.raises(BenchError, match="mine.yaml is not valid YAML"):
        Catalog.load(directory)


@pytest.mark.parametrize("entry, says", [
    ("evaluator: cocoo", r"names the evaluator 'cocoo'.*Did you mean 'coco'\?"),
    ("evaluator_options: {fixed_ap: true}", r"gives the coco evaluator unknown option\(s\) \['fixed_ap'\]; it takes backend, legacy_plus_one"),
    ("category_names: {one: x}", r"dataset 'd' has a value of the wrong kind .*What each entry declares"),
    ("caption_prompts: {1: {colour: red}}", r"dataset 'd' has a value of the wrong kind"),
], ids=["unknown evaluator", "unknown evaluator option", "non-integer category id", "caption prompt key"])
def test_a_dataset_entry_that_would_fail_later_is_refused_at_load(tmp_path, entry, says):
    directory = _write_catalog(tmp_path, f"datasets:\n  d:\n    root: x\n    splits: {{}}\n    {entry}\n")
    with pytest.raises(BenchError, match=says):
        Catalog.load(directory)


def test_a_user_catalog_adds_to_the_built_in_one_and_may_not_reuse_its_names(tmp_path):
    catalog = Catalog.with_user_folder(_write_catalog(tmp_path / "mine", LOCAL))
    assert "toy" in catalog.datasets and "odinw-pascalvoc" in catalog.datasets and "local" in catalog.suites
    clash = _write_catalog(tmp_path / "clash", "datasets:\n  coco:\n    root: x\n    splits: {}\n")
    with pytest.raises(BenchError, match=r"Dataset 'coco' is declared twice, in .*coco.yaml and again in .*clash/mine.yaml"):
        Catalog.with_user_folder(clash)
    with pytest.raises(BenchError, match="catalog folder .*nowhere does not exist"):
        Catalog.with_user_folder(tmp_path / "nowhere")


LOCAL = """
suite: {name: local, version: 2, datasets: [toy]}
datasets:
  toy:
    root: toy
    category_names: {2: renamed}
    splits:
      train: {images: train, annotations: train/annotations.json}
      val: {images: val, annotations: val/annotations.json}
"""


def test_require_data_lists_every_missing_path_before_work(tmp_path):
    catalog = Catalog.load(_write_catalog(tmp_path / "catalog", LOCAL))
    data_root = tmp_path / "data"
    write_dataset(data_root / "toy" / "train", coco_dict())
    with pytest.raises(DataError, match=r"2 dataset path\(s\) are missing.*toy/val.*toy/val/annotations.json.*Nothing was run"):
        require_data(catalog.resolve("local"), data_root)
    with pytest.raises(DataError, match="data root .*nowhere does not exist"):
        require_data(catalog.resolve("local"), tmp_path / "nowhere")
    require_data(catalog.resolve("local"), data_root, splits=["train"])


def test_open_split_applies_overrides(tmp_path):
    catalog = Catalog.load(_write_catalog(tmp_path / "catalog", LOCAL))
    data_root = tmp_path / "data"
    write_dataset(data_root / "toy" / "train", coco_dict())
    spec = catalog.dataset("toy")
    assert load_split_annotations(spec, "train", data_root).category_names() == {1: "class1", 2: "renamed"}
    dataset = open_split(spec, "train", data_root)
    assert [c.name for c in dataset.prompt_classes()] == ["class1", "renamed"]
    assert catalog.suite("local").version == 2


def test_synthetic_datasets_are_generated_on_first_use(catalog, tmp_path):
    spec = catalog.dataset("shapes")
    require_data([spec], data_root=None, cache_root=tmp_path)
    dataset = open_split(spec, "val", None, cache_root=tmp_path)
    assert len(dataset) == 40
    image, target = dataset[0]
    assert image.size[0] >= 96 and len(target["labels"]) >= 1
    assert (tmp_path / "synthetic" / "shapes" / "manifest.json").is_file()


def test_every_suite_resolves_to_declared_datasets(catalog):
    for entry in catalog.suites:
        assert [spec.name for spec in catalog.resolve(entry.name)] == list(entry.obj.datasets)
    assert {"coco", "lvis", "odinw13", "shapes", "shapes-odinw", "shapes-lvis"} <= set(catalog.suites.names())


def test_every_registered_model_has_an_entry_and_the_declared_overlaps_flag_what_they_should(catalog):
    from bench.models import MODELS
    from bench.report.overlaps import find_overlaps

    assert sorted(entry.name for entry in catalog.models) == MODELS.names()
    odinw13 = set(catalog.suite("odinw13").datasets)
    flags = find_overlaps(catalog, ["glip-t", "glip-l", "grounding-dino-b"], [*odinw13, "coco", "rf-aquarium-combined"])
    assert {o.dataset for o in flags if o.model == "grounding-dino-b"} == odinw13 | {"coco", "rf-aquarium-combined"}
    assert {(o.model, o.dataset) for o in flags if o.corpus == "openimages"} == {
        (model, dataset) for model in ("glip-l", "grounding-dino-b") for dataset in ("odinw-shellfish", "odinw-vehicles")}
    assert not [o for o in flags if o.model == "glip-t"]  # Objects365, GoldG, CC3M, SBU: no declared overlap
    for entry in catalog.models:
        for table in entry.obj.published:
            assert all(0 <= score <= 100 for score in table.values.values()) and table.source
