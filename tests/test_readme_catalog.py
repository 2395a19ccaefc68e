"""README's "Your own COCO-format dataset" example is a working catalog file: it loads beside the
built-in catalog, and a dataset laid out as it says passes the data check."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from bench.catalog import Catalog
from bench.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_catalog_yaml() -> str:
    section = README.read_text().split("### Your own COCO-format dataset", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


def write_split(folder: Path, categories: dict[int, str]) -> None:
    """Two 32x24 JPEG images with one box of each category inside."""
    folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id in (1, 2):
        Image.new("RGB", (32, 24), (image_id * 60, 90, 30)).save(folder / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 32, "height": 24})
        for category_id in categories:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [2.0 * category_id, 3.0, 8.0, 6.0], "area": 48.0, "iscrowd": 0})
    cats = [{"id": cid, "name": f"class {cid}"} for cid in categories]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))


def test_the_readme_example_loads_beside_the_built_in_catalog_and_its_layout_passes_the_check(tmp_path, capsys):
    folder = tmp_path / "my-catalog"
    folder.mkdir()
    (folder / "birds.yaml").write_text(readme_catalog_yaml())
    catalog = Catalog.with_user_folder(folder)
    spec = catalog.dataset("birds-feeder")
    assert catalog.suite("birds").datasets == ("birds-feeder",) and "odinw-pascalvoc" in catalog.datasets
    assert spec.category_names == {1: "sparrow", 2: "robin", 3: "blue tit"}
    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        images, annotations = spec.split_paths(split, data)
        assert annotations.parent == images  # the example keeps each split's file beside its images
        write_split(images, spec.category_names)
    assert main(["--catalog", str(folder), "--suite", "birds", "--data-root", str(data), "--check-data",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert "All 1 dataset(s) passed the header check" in capsys.readouterr().out
