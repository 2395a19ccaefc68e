"""The dataset and suite catalog, declared as YAML in ``datasets/*.yaml``.

Each YAML file may declare datasets (where the splits live, class-name overrides, caption prompts,
evaluator, prompt chunking) and one suite (a versioned list of datasets with its aggregation).
Keeping this as data means adding a dataset touches no Python, and a dataset's ``version`` and its
suite's ``version`` can go into every result key.

Real datasets live below ``--data-root``; synthetic ones (``generator: <preset>``) are generated on
first use below a cache folder. :func:`require_data` checks that every needed file exists before any
work starts and reports all missing paths at once.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from bench.data.coco_format import CocoAnnotations, load_coco
from bench.data.dataset import CaptionPrompt, DetectionDataset
from bench.data.roboflow import without_roboflow_placeholder
from bench.errors import BenchError, DataError
from bench.registry import Registry

CATALOG_DIR = Path(__file__).resolve().parents[1] / "datasets"
SPLITS = ("train", "val", "test")
RELEASED_SHOTS_SPLIT = re.compile(r"^train-(\d+)shot$")
"""A training split released for K shots (CD-FSOD's ``1_shot.json``): declared as ``train-<K>shot``."""
AGGREGATIONS = ("mean",)
MAX_LISTED_MISSING = 10
INVALID_BOX_POLICIES = ("refuse", "drop")
UNKEYED_DATASET_FIELDS = ("source", "domain", "overlaps")


def default_cache_root() -> Path:
    """Where synthetic datasets are generated: ``$BENCH_CACHE_DIR`` or the user's cache folder."""
    if "BENCH_CACHE_DIR" in os.environ:
        return Path(os.environ["BENCH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vl-peft-bench"


@dataclass(frozen=True)
class SplitSpec:
    """An image folder and its annotation file, both relative to the dataset root."""

    images: str
    annotations: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the harness needs to know about one dataset, as declared in the catalog.

    ``invalid_boxes`` says what the data check (:mod:`bench.catalog_check`) does with boxes that are
    degenerate or mostly outside their image: ``"refuse"`` them (the default, so a broken file is
    noticed) or ``"drop"`` them from training and count them, for datasets known to ship a few.

    ``splits`` may hold released K-shot training splits as ``train-<K>shot`` next to ``train``, ``val``
    and ``test`` (:attr:`released_shots`); a K-shot cell then trains on that file instead of drawing a
    sample. ``domain`` groups a suite's members (RF100-VL's seven domains) into per-domain means.
    ``overlaps`` maps pre-training corpora this dataset is known to share images or classes with to
    the source of that claim (:mod:`bench.contamination`). ``roboflow_placeholder`` drops the
    placeholder category a Roboflow COCO export carries, on the fly (:func:`load_split_annotations`).
    """

    name: str
    root: str
    splits: Mapping[str, SplitSpec]
    version: int = 1
    description: str = ""
    evaluator: str = "coco"
    evaluator_options: Mapping[str, Any] = field(default_factory=dict)
    category_names: Mapping[int, str] = field(default_factory=dict)
    caption_prompts: Mapping[int, CaptionPrompt] = field(default_factory=dict)
    chunk_size: int | None = None
    detections_per_image: int = 100
    generator: str | None = None
    invalid_boxes: str = "refuse"
    domain: str | None = None
    overlaps: Mapping[str, str] = field(default_factory=dict)
    roboflow_placeholder: bool = False
    source: Path | None = None

    @property
    def is_synthetic(self) -> bool:
        return self.generator is not None

    def root_dir(self, data_root: Path | None, cache_root: Path | None = None) -> Path:
        if self.is_synthetic:
            return Path(cache_root or default_cache_root()) / self.root
        if data_root is None:
            raise BenchError(
                f"Dataset {self.name!r} lives on your disk, but no data root was given. Pass --data-root DIR "
                f"(the folder that holds {self.root}/); see datasets/README.md for how to obtain it."
            )
        return Path(data_root) / self.root

    def keyed_entry(self) -> dict[str, Any]:
        """The entry's fields that change a number, for the data fingerprint in every run key: not the
        file it was read from, nor ``domain`` and ``overlaps`` (a grouping and a claim about the data);
        ``roboflow_placeholder`` only when set, so entries that do not use it keep their keys."""
        entry = {name: value for name, value in asdict(self).items() if name not in UNKEYED_DATASET_FIELDS}
        if not self.roboflow_placeholder:
            del entry["roboflow_placeholder"]
        return entry

    @property
    def released_shots(self) -> dict[int, str]:
        """``{K: split name}`` of the training splits released for K shots, in ascending K."""
        found = {int(m.group(1)): name for name in self.splits if (m := RELEASED_SHOTS_SPLIT.match(name))}
        return dict(sorted(found.items()))

    def training_split(self, shots: int | None) -> str:
        """The split a cell with ``shots`` trains on: the released K-shot split where there is one, else
        ``train`` (full data, or the pool a K-shot sample is drawn from)."""
        return self.released_shots.get(shots, "train") if shots is not None else "train"

    def split(self, split: str) -> SplitSpec:
        if split not in self.splits:
            raise BenchError(f"Dataset {self.name!r} has no split {split!r}; it declares {sorted(self.splits)}.")
        return self.splits[split]

    def declared_splits(self, wanted: Iterable[str] = SPLITS) -> list[str]:
        """The declared splits among ``wanted``, where ``train`` also stands for the released K-shot
        training splits (a dataset may release only those, as CD-FSOD does)."""
        wanted = set(wanted)
        return [name for name in self.splits if name in wanted or ("train" in wanted and RELEASED_SHOTS_SPLIT.match(name))]

    def split_paths(self, split: str, data_root: Path | None, cache_root: Path | None = None) -> tuple[Path, Path]:
        """``(image folder, annotation file)`` of ``split``."""
        root = self.root_dir(data_root, cache_root)
        spec = self.split(split)
        return root / spec.images, root / spec.annotations


@dataclass(frozen=True)
class SuiteSpec:
    """A versioned group of datasets and how their scores combine into one number."""

    name: str
    datasets: tuple[str, ...]
    version: int = 1
    description: str = ""
    aggregation: str = "mean"
    source: Path | None = None


@dataclass(frozen=True)
class PublishedScores:
    """Per-dataset scores a paper or model card reports for a model in one setting, in percent.

    ``split`` is the catalog split they were measured on (``val`` or ``test``); ``weights`` the file
    or folder name of the checkpoint they belong to (None: the model has one). ``tolerance`` is how
    far (points) a faithful re-run may land from them: published tables of the same model differ by a
    few points between sources (checkpoint, evaluation code)."""

    setting: str
    metric: str
    source: str
    values: Mapping[str, float]
    split: str = "test"
    weights: str | None = None
    tolerance: float = 3.0


@dataclass(frozen=True)
class RetentionSet:
    """What a model's open-vocabulary ability is measured on after tuning: the ``split`` of each of
    ``datasets`` (data of the model's pre-training world that tuning never sees), its first ``images``
    images by id (all when None), scored with the dataset's own evaluator and class names."""

    datasets: tuple[str, ...]
    split: str = "test"
    images: int | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What the catalog knows of a registered model: the corpora it was pre-trained on (names that
    dataset entries' ``overlaps`` use), the source of that list, and published scores to compare with."""

    name: str
    pretraining: tuple[str, ...]
    pretraining_source: str
    published: tuple[PublishedScores, ...] = ()
    retention: RetentionSet | None = None
    source: Path | None = None


class Catalog:
    """All datasets, suites and model facts declared in a catalog folder, looked up by name."""

    def __init__(self) -> None:
        self.datasets: Registry[DatasetSpec] = Registry("dataset")
        self.suites: Registry[SuiteSpec] = Registry("suite")
        self.models: Registry[ModelFacts] = Registry("model entry")

    @classmethod
    def load(cls, directory: str | Path = CATALOG_DIR) -> "Catalog":
        """The catalog of one folder (the repository's ``datasets/`` by default)."""
        return cls.from_folders([Path(directory)])

    @classmethod
    def with_user_folder(cls, extra: str | Path | None = None) -> "Catalog":
        """The built-in catalog plus the user's ``--catalog`` folder (None: built-in only); a dataset or
        suite name declared in both is an error, so a user file can never silently replace ours."""
        return cls.from_folders([CATALOG_DIR] + ([Path(extra)] if extra is not None else []))

    @classmethod
    def from_folders(cls, directories: Sequence[Path]) -> "Catalog":
        catalog = cls()
        for directory in directories:
            if not directory.is_dir():
                raise BenchError(f"The catalog folder {directory} does not exist or is not a folder; pass --catalog a "
                                 "folder of *.yaml dataset files (README.md: \"Your own COCO-format dataset\").")
            files = sorted(directory.glob("*.yaml"))
            if not files:
                raise BenchError(f"The dataset catalog {directory} holds no *.yaml files; put your dataset and suite "
                                 "files there (README.md: \"Your own COCO-format dataset\").")
            for path in files:
                catalog._add_file(path)
        for suite in catalog.suites:
            for name in suite.obj.datasets:
                if name not in catalog.datasets:
                    raise BenchError(
                        f"Suite {suite.name!r} in {suite.obj.source} lists dataset {name!r}, which no catalog file "
                        f"declares. {catalog.datasets.unknown_name_message(name)}"
                    )
        for facts in catalog.models:
            retention = facts.obj.retention.datasets if facts.obj.retention is not None else ()
            for name in retention:
                if name not in catalog.datasets:
                    raise BenchError(
                        f"Model entry {facts.name!r} in {facts.obj.source} measures retention on dataset {name!r}, which "
                        f"no catalog file declares. {catalog.datasets.unknown_name_message(name)}")
            for published in facts.obj.published:
                for name in published.values:
                    if name not in catalog.datasets:
                        raise BenchError(
                            f"Model entry {facts.name!r} in {facts.obj.source} publishes a score for dataset {name!r}, which "
                            f"no catalog file declares. {catalog.datasets.unknown_name_message(name)}")
        return catalog

    def _add_file(self, path: Path) -> None:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise BenchError(f"Catalog file {path} is not valid YAML ({' '.join(str(err).split())}); fix the file "
                             "(datasets/README.md shows the format).") from None
        except (OSError, UnicodeDecodeError) as err:
            raise BenchError(f"Catalog file {path} cannot be read as UTF-8 text ({err}); fix or remove it.") from None
        _check_keys(path, "the top level", doc, {"suite", "defaults", "datasets", "models"})
        defaults = doc.get("defaults") or {}
        for name, entry in (doc.get("datasets") or {}).items():
            if name in self.datasets:
                first = self.datasets.get(name).source
                raise BenchError(f"Dataset {name!r} is declared twice, in {first} and again in {path}; names must be "
                                 "unique, so rename the one in your catalog folder.")
            self.datasets.add(name, _dataset_spec(path, name, {**defaults, **(entry or {})}), (entry or {}).get("description", ""))
        if "suite" in doc:
            suite = _suite_spec(path, doc["suite"])
            if suite.name in self.suites:
                raise BenchError(f"Suite {suite.name!r} is declared twice, in {self.suites.get(suite.name).source} and "
                                 f"again in {path}; names must be unique, so rename the one in your catalog folder.")
            self.suites.add(suite.name, suite, suite.description)
        for name, entry in (doc.get("models") or {}).items():
            if name in self.models:
                raise BenchError(f"Model entry {name!r} is declared twice, in {self.models.get(name).source} and again in "
                                 f"{path}; declare each model once.")
            self.models.add(name, _model_facts(path, str(name), entry), "")

    def dataset(self, name: str) -> DatasetSpec:
        return self.datasets.get(name)

    def suite(self, name: str) -> SuiteSpec:
        return self.suites.get(name)

    def resolve(self, suite: str | None = None, datasets: Iterable[str] | None = None) -> list[DatasetSpec]:
        """The datasets a command asks for: a suite's members, explicit names, or both (in order, no repeats)."""
        names: list[str] = list(self.suite(suite).datasets) if suite else []
        for name in datasets or ():
            if name not in names:
                names.append(name)
        if not names:
            raise BenchError("No datasets selected: pass --suite NAME or --datasets A,B (see --list).")
        return [self.dataset(n) for n in names]


def _check_keys(path: Path, where: str, entry: Any, allowed: set[str]) -> None:
    if not isinstance(entry, dict):
        raise BenchError(f"Catalog file {path}: {where} must be a mapping, found {type(entry).__name__}.")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise BenchError(
            f"Catalog file {path}: {where} has unknown key(s) {unknown}; valid keys are {sorted(allowed)}."
        )


_DATASET_KEYS = {f.name for f in fields(DatasetSpec)} - {"name", "source"}


def _dataset_spec(path: Path, name: str, entry: dict[str, Any]) -> DatasetSpec:
    where = f"dataset {name!r}"
    _check_keys(path, where, entry, _DATASET_KEYS)
    for key in ("root", "splits"):
        if key not in entry:
            raise BenchError(f"Catalog file {path}: {where} lacks the required key {key!r}.")
    if not isinstance(entry["splits"], dict):
        raise BenchError(f"Catalog file {path}: {where} has splits that are not a mapping of train/val/test to "
                         "{images: FOLDER, annotations: FILE}.")
    splits = {}
    for split, spec in entry["splits"].items():
        if split not in SPLITS and not RELEASED_SHOTS_SPLIT.match(str(split)):
            raise BenchError(f"Catalog file {path}: {where} declares split {split!r}; valid splits are {SPLITS} and "
                             "train-<K>shot for a training split released for K shots (e.g. train-10shot).")
        _check_keys(path, f"{where}, split {split!r}", spec, {"images", "annotations"})
        splits[split] = SplitSpec(str(spec["images"]), str(spec["annotations"]))
    _check_evaluator(path, where, entry.get("evaluator", "coco"), entry.get("evaluator_options") or {})
    try:
        return _typed_dataset_spec(path, name, entry, splits)
    except (TypeError, ValueError, AttributeError) as err:
        raise BenchError(f"Catalog file {path}: {where} has a value of the wrong kind ({err}); datasets/README.md "
                         "(\"What each entry declares\") shows each key's form.") from None


def _check_evaluator(path: Path, where: str, name: Any, options: Any) -> None:
    """The evaluator exists and takes every option, so a typo fails at load, not after training."""
    from bench.eval import EVALUATORS  # pycocotools and lvis: only once a catalog is read

    if name not in EVALUATORS:
        raise BenchError(f"Catalog file {path}: {where} names the evaluator {name!r}. {EVALUATORS.unknown_name_message(str(name))}")
    if not isinstance(options, dict):
        raise BenchError(f"Catalog file {path}: {where} has evaluator_options that are not a mapping ({options!r}).")
    accepted = [p.name for p in inspect.signature(EVALUATORS.get(name)).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BenchError(f"Catalog file {path}: {where} gives the {name} evaluator unknown option(s) {unknown}; "
                         f"it takes {', '.join(accepted)}.")


def _typed_dataset_spec(path: Path, name: str, entry: dict[str, Any], splits: dict[str, SplitSpec]) -> DatasetSpec:
    where = f"dataset {name!r}"
    prompts = {
        int(cid): CaptionPrompt(**p) for cid, p in (entry.get("caption_prompts") or {}).items()
    }
    invalid_boxes = entry.get("invalid_boxes", "refuse")
    if invalid_boxes not in INVALID_BOX_POLICIES:
        raise BenchError(
            f"Catalog file {path}: {where} has invalid_boxes: {invalid_boxes!r}; write 'refuse' (the default: the "
            "data check stops on empty or mostly-outside boxes) or 'drop' (train without them and count them)."
        )
    overlaps = entry.get("overlaps") or {}
    if not isinstance(overlaps, dict) or not all(isinstance(v, str) and v for v in overlaps.values()):
        raise BenchError(f"Catalog file {path}: {where} has overlaps that are not a mapping of pre-training corpus to "
                         "the source of the claim, e.g. {objects365: \"its classes are Objects365 classes (paper, sec. 3)\"}.")
    return DatasetSpec(
        name=name,
        root=str(entry["root"]),
        splits=splits,
        version=int(entry.get("version", 1)),
        description=str(entry.get("description", "")),
        evaluator=str(entry.get("evaluator", "coco")),
        evaluator_options=dict(entry.get("evaluator_options") or {}),
        category_names={int(k): str(v) for k, v in (entry.get("category_names") or {}).items()},
        caption_prompts=prompts,
        chunk_size=entry.get("chunk_size"),
        detections_per_image=int(entry.get("detections_per_image", 100)),
        generator=entry.get("generator"),
        invalid_boxes=invalid_boxes,
        domain=None if entry.get("domain") is None else str(entry["domain"]),
        overlaps={str(corpus): source for corpus, source in overlaps.items()},
        roboflow_placeholder=_flag(path, where, "roboflow_placeholder", entry.get("roboflow_placeholder", False)),
        source=path,
    )


def _flag(path: Path, where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BenchError(f"Catalog file {path}: {where} has {key}: {value!r}; write true or false.")
    return value


def _suite_spec(path: Path, entry: dict[str, Any]) -> SuiteSpec:
    _check_keys(path, "the suite", entry, {"name", "version", "description", "aggregation", "datasets"})
    if "name" not in entry or not entry.get("datasets"):
        raise BenchError(f"Catalog file {path}: the suite needs a 'name' and a non-empty 'datasets' list.")
    aggregation = entry.get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise BenchError(f"Catalog file {path}: unknown aggregation {aggregation!r}; valid: {AGGREGATIONS}.")
    return SuiteSpec(
        name=str(entry["name"]),
        datasets=tuple(entry["datasets"]),
        version=int(entry.get("version", 1)),
        description=str(entry.get("description", "")),
        aggregation=aggregation,
        source=path,
    )


def _model_facts(path: Path, name: str, entry: Any) -> ModelFacts:
    where = f"model entry {name!r}"
    _check_keys(path, where, entry, {"pretraining", "pretraining_source", "published", "retention"})
    corpora = entry.get("pretraining")
    if not isinstance(corpora, list) or not corpora or not entry.get("pretraining_source"):
        raise BenchError(f"Catalog file {path}: {where} needs 'pretraining' (a non-empty list of corpus names) and "
                         "'pretraining_source' (where that list is stated).")
    published = []
    for index, table in enumerate(entry.get("published") or []):
        table_where = f"{where}, published[{index}]"
        _check_keys(path, table_where, table, {"setting", "metric", "source", "split", "weights", "tolerance", "values"})
        if table.get("split", "test") not in ("val", "test"):
            raise BenchError(f"Catalog file {path}: {table_where} has split {table.get('split')!r}; write val or test.")
        missing = [key for key in ("setting", "metric", "source", "values") if not table.get(key)]
        if missing:
            raise BenchError(f"Catalog file {path}: {table_where} lacks {', '.join(missing)}; each published table names "
                             "its setting (zero-shot), metric (AP), source and {dataset: score in percent} values.")
        try:
            values = {str(dataset): float(score) for dataset, score in table["values"].items()}
            tolerance = float(table.get("tolerance", 3.0))
        except (TypeError, ValueError, AttributeError) as err:
            raise BenchError(f"Catalog file {path}: {table_where} has a value that is not a number ({err}).") from None
        weights = None if table.get("weights") is None else str(table["weights"])
        published.append(PublishedScores(str(table["setting"]), str(table["metric"]), str(table["source"]), values,
                                         str(table.get("split", "test")), weights, tolerance))
    return ModelFacts(name, tuple(str(c) for c in corpora), str(entry["pretraining_source"]), tuple(published),
                      _retention_set(path, where, entry.get("retention")), path)


def _retention_set(path: Path, where: str, entry: Any) -> RetentionSet | None:
    if entry is None:
        return None
    _check_keys(path, f"{where}, retention", entry, {"datasets", "split", "images"})
    datasets, split, images = entry.get("datasets"), entry.get("split", "test"), entry.get("images")
    if (not isinstance(datasets, list) or not datasets or split not in SPLITS
            or not (images is None or (isinstance(images, int) and images >= 1))):
        raise BenchError(f"Catalog file {path}: {where} has a retention set that is not {{datasets: [NAME, ...], split: "
                         f"{'|'.join(SPLITS)}, images: N >= 1 (optional)}}; got {entry!r}.")
    return RetentionSet(tuple(str(d) for d in datasets), split, images)


def materialize_synthetic(spec: DatasetSpec, cache_root: Path | None = None) -> Path:
    """Generate a synthetic dataset into the cache (a no-op when it is already there)."""
    from bench.data import synthetic

    out_dir = spec.root_dir(None, cache_root)
    synthetic.generate(synthetic.preset(spec.generator), out_dir)
    return out_dir


def require_data(
    specs: Iterable[DatasetSpec],
    data_root: Path | None,
    splits: Iterable[str] = SPLITS,
    cache_root: Path | None = None,
) -> None:
    """Fail with one error listing every missing folder or annotation file, before any work starts.

    Synthetic datasets are generated here instead. Only the existence of folders and annotation
    files is checked (cheap); images are checked when a split is opened.
    """
    if data_root is not None and not Path(data_root).is_dir():
        raise DataError(
            f"The data root {data_root} does not exist. Pass --data-root the folder that holds coco/, odinw/ "
            f"and the other datasets; datasets/README.md says how to obtain and lay out each one."
        )
    missing: list[str] = []
    splits = tuple(splits)
    for spec in specs:
        if spec.is_synthetic:
            materialize_synthetic(spec, cache_root)
            continue
        root = spec.root_dir(data_root, cache_root)
        if not root.is_dir():
            missing.append(f"{spec.name}: {root}")
            continue
        for split in spec.declared_splits(splits):
            images, annotations = spec.split_paths(split, data_root, cache_root)
            for path, is_there in ((images, images.is_dir()), (annotations, annotations.is_file())):
                if not is_there and f"{spec.name}: {path}" not in missing:
                    missing.append(f"{spec.name}: {path}")
    if missing:
        listed = "; ".join(missing[:MAX_LISTED_MISSING])
        more = f" (and {len(missing) - MAX_LISTED_MISSING} more)" if len(missing) > MAX_LISTED_MISSING else ""
        raise DataError(
            f"{len(missing)} dataset path(s) are missing under --data-root {data_root}: {listed}{more}. "
            f"Nothing was run. datasets/README.md says how to obtain and lay out each dataset."
        )


def load_split_annotations(spec: DatasetSpec, split: str, data_root: Path | None, cache_root: Path | None = None) -> CocoAnnotations:
    """A split's validated annotations, a Roboflow export's placeholder category dropped where the entry
    says so (:mod:`bench.data.roboflow`), with the catalog's class-name overrides applied."""
    _, annotations_path = spec.split_paths(split, data_root, cache_root)
    annotations = load_coco(annotations_path)
    if spec.roboflow_placeholder:
        annotations = without_roboflow_placeholder(annotations)
    return annotations.with_category_names(spec.category_names) if spec.category_names else annotations


def open_split(
    spec: DatasetSpec,
    split: str,
    data_root: Path | None,
    *,
    cache_root: Path | None = None,
    transform=None,
    annotations: CocoAnnotations | None = None,
) -> DetectionDataset:
    """A ready-to-iterate dataset for one split (optionally on given, e.g. few-shot, annotations)."""
    images, _ = spec.split_paths(split, data_root, cache_root)
    if annotations is None:
        annotations = load_split_annotations(spec, split, data_root, cache_root)
    return DetectionDataset(annotations, images, transform=transform, caption_prompts=dict(spec.caption_prompts))
