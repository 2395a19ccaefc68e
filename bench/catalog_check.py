"""Checking, before any training, that every file a run will read is there, whole and consistent.

A broken image or box otherwise surfaces hours into a sweep, in a data-loader worker, as one
traceback about one file. :func:`check_datasets` instead reads every declared split of every dataset
up front and reports all problems of all datasets in one :class:`DataError`, one paragraph each.

Two levels: ``header`` (cheap: each image opens, has the annotated size and is not cut off) and
``full`` (also decodes every pixel). A split that passes leaves a stamp in the cache, so the cheap
check every sweep runs first costs almost nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image
from tqdm import tqdm

from bench.catalog import SPLITS, DatasetSpec, default_cache_root, load_split_annotations, require_data
from bench.data.coco_format import CocoAnnotations
from bench.data.dataset import box_placement, image_path, image_relative_path
from bench.errors import BenchError, DataError

LEVELS = ("header", "full")
CHECK_VERSION = 1  # part of every stamp: bump it when the checks change, so old stamps stop counting
TAIL_BYTES = 4096
# JPEG: entropy-coded data stuffs every 0xFF with 0x00, so the end-of-image marker cannot appear by
# chance and its absence from the tail means the file was cut off. PNG: the closing IEND chunk
# (length 0, type, CRC) is the same 12 bytes in every file.
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # OSError covers UnidentifiedImageError
MAX_EXAMPLES = 5

# kind -> (what was found, what to do; boxes: _box_fix). "file" findings are whole sentences instead.
_FINDINGS = {
    "missing": ("image(s) are missing",
                "obtain the missing images (the folder is incomplete or from another version of the dataset)"),
    "not_a_file": ("image path(s) are not regular files", "replace each folder or special file with its image"),
    "unreadable": ("image(s) cannot be opened as images", "obtain the unreadable images again (corrupt or not images)"),
    "truncated": ("image(s) are cut off before their end marker (JPEG EOI, PNG IEND)",
                  "obtain the cut-off images again (truncated while downloading or unpacking)"),
    "undecodable": ("image(s) fail to decode", "obtain the undecodable images again (their pixel data is corrupt)"),
    "size": ("image(s) differ in size from the width/height in the annotation file",
             "use images and annotations of the same version of the dataset"),
    "degenerate": ("box(es) are empty, malformed or non-finite", ""),
    "outside": ("box(es) have less than half of their area inside their image", ""),
}


@dataclass(frozen=True)
class ImageReport:
    """What checking one image file found: its ``(width, height)`` when the header could be read, and
    the kind of problem (a key of ``_FINDINGS``) with PIL's explanation, if any."""

    size: tuple[int, int] | None = None
    problem: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class SplitSummary:
    """Counts of a split that passed: ``boxes`` are the usable ones (``clipped`` of them partly
    outside and clamped for training), ``dropped`` the invalid ones left out (``invalid_boxes: drop``)."""

    split: str
    images: int
    boxes: int
    classes: int
    clipped: int
    dropped: int
    level: str
    from_stamp: bool = False


@dataclass(frozen=True)
class DatasetCheck:
    """The result of a passed check of one dataset, split by split."""

    name: str
    splits: tuple[SplitSummary, ...]

    def summary_lines(self) -> list[str]:
        """One line per split, for the CLI to print."""
        lines = []
        for s in self.splits:
            dropped = f", {s.dropped} dropped" if s.dropped else ""
            stamp = ", unchanged since it passed" if s.from_stamp else ""
            lines.append(
                f"{self.name:<22} {s.split:<5} {s.images:>7} images {s.boxes:>8} boxes {s.classes:>5} classes "
                f"({s.clipped} clipped{dropped}; {s.level} check{stamp})"
            )
        return lines


def check_image(path: Path, full: bool = False) -> ImageReport:
    """Check one image file as training will read it; never raises for a bad file.

    Header level: a regular file that PIL can open (header only, no decode) and, for JPEG and PNG,
    whose end marker is in its last bytes. ``full`` also decodes all pixels, with PIL's
    ``LOAD_TRUNCATED_IMAGES`` left as it is (off), as the training loader does.
    """
    if not path.exists():
        return ImageReport(problem="missing")
    if not path.is_file():
        return ImageReport(problem="not_a_file")
    try:
        image = Image.open(path)
    except PIL_ERRORS as err:
        return ImageReport(problem="unreadable", detail=_one_line(err))
    with image:
        size = image.size
        marker = END_MARKERS.get(image.format or "")
        try:
            if marker is not None and marker not in _tail(path):
                return ImageReport(size, "truncated")
        except OSError as err:
            return ImageReport(size, "unreadable", _one_line(err))
        if full:
            try:
                image.load()
            except PIL_ERRORS as err:
                return ImageReport(size, "undecodable", _one_line(err))
    return ImageReport(size)


def check_datasets(
    specs: Sequence[DatasetSpec],
    data_root: Path | None,
    cache_root: Path | None,
    *,
    full: bool = False,
    threads: int = 8,
    splits: Iterable[str] = SPLITS,
    progress: bool = False,
) -> list[DatasetCheck]:
    """Check every declared split (of ``splits``) of every dataset; raise one :class:`DataError` with
    one paragraph per dataset that has problems, or return the per-dataset summaries.

    Missing folders and annotation files are reported first by :func:`require_data` (which also
    generates synthetic datasets). Splits whose files are unchanged since they passed a check of
    the same or a higher level are skipped (stamps under ``<cache>/checks``).
    """
    if threads < 1:
        raise BenchError(f"The data check needs at least one thread; got {threads}. Pass a positive number.")
    splits = tuple(splits)
    require_data(specs, data_root, splits, cache_root)
    level = "full" if full else "header"
    stamps = _Stamps(Path(cache_root or default_cache_root()) / "checks")
    results, paragraphs = [], []
    with ThreadPoolExecutor(threads) as pool:
        for spec in specs:
            checker = _DatasetChecker(spec, data_root, cache_root, level, stamps)
            with tqdm(total=0, desc=spec.name, unit="image", disable=not progress) as bar:
                summaries = [checker.check_split(split, pool, bar) for split in spec.declared_splits(splits)]
            if checker.findings:
                paragraphs.append(checker.paragraph())
            else:
                results.append(DatasetCheck(spec.name, tuple(s for s in summaries if s is not None)))
    if paragraphs:
        raise DataError("\n\n".join(paragraphs))
    return results


class _DatasetChecker:
    """Checks the splits of one dataset and collects its findings as ``(split, kind) -> examples``."""

    def __init__(self, spec: DatasetSpec, data_root: Path | None, cache_root: Path | None, level: str,
                 stamps: _Stamps) -> None:
        self.spec, self.data_root, self.cache_root = spec, data_root, cache_root
        self.level, self.stamps = level, stamps
        self.findings: dict[tuple[str, str], list[str]] = {}

    def check_split(self, split: str, pool: ThreadPoolExecutor, bar: tqdm) -> SplitSummary | None:
        image_dir, annotations_path = self.spec.split_paths(split, self.data_root, self.cache_root)
        key = self.stamps.key(image_dir, annotations_path, self.spec)
        stamped = self.stamps.find(key, self.level)
        if stamped is not None:  # a split sharing its files with another (PascalVOC's val and test) keeps its own name
            return replace(stamped, split=split)
        try:
            annotations = load_split_annotations(self.spec, split, self.data_root, self.cache_root)
        except DataError as err:
            self._add(split, "file", str(err))
            return None
        sizes = self._check_images(split, annotations, image_dir, pool, bar)
        clipped, outside = self._check_boxes(annotations, sizes)
        degenerate = [f"annotation id {i}" for i in annotations.skipped_annotations]
        dropping = self.spec.invalid_boxes == "drop"
        if not dropping:
            for kind, examples in (("degenerate", degenerate), ("outside", outside)):
                for example in examples:
                    self._add(split, kind, example)
        # Degenerate boxes never reach annotations.data; mostly-outside ones are in it.
        total = len(annotations.data["annotations"]) + len(degenerate)
        dropped = len(degenerate) + len(outside) if dropping else 0
        if total == 0:
            self._add(split, "file", f"Annotation file {annotations_path} lists no annotations at all; it is "
                                     "incomplete or not this split's: obtain it again or fix the catalog's splits "
                                     "entry.")
        elif dropped == total:
            self._add(split, "file", f"All {total} boxes in {annotations_path} are invalid, so invalid_boxes: drop "
                                     "would leave nothing to train or evaluate on; correct the file.")
        if any(found_in == split for found_in, _ in self.findings):
            return None
        summary = SplitSummary(split, len(annotations.images), total - dropped, annotations.num_classes, clipped,
                               dropped, self.level)
        self.stamps.write(key, summary)
        return summary

    def _check_images(self, split: str, annotations: CocoAnnotations, image_dir: Path, pool: ThreadPoolExecutor,
                      bar: tqdm) -> dict[int, tuple[int, int]]:
        """Check every image in ``pool``; return each image's size, from the file when the annotation
        does not give it (the box check needs one)."""
        bar.total += len(annotations.images)
        bar.refresh()
        full = self.level == "full"
        ids = annotations.image_ids
        # PIL warns about metadata (EXIF, palettes, very large images) that does not decide whether
        # training can read the pixels: verdicts come from exceptions, and users see no raw warnings.
        # Only this (main) thread enters the context, and every worker call ends inside it.
        reports = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for report in pool.map(lambda i: check_image(image_path(image_dir, annotations.images[i]), full), ids):
                reports.append(report)
                bar.update()
        sizes = {}
        for image_id, report in zip(ids, reports):
            image = annotations.images[image_id]
            name = f"{image_relative_path(image)} (id {image_id})"
            annotated = _annotated_size(image)
            if report.problem is not None:
                self._add(split, report.problem, f"{name}: {report.detail}" if report.detail else name)
            elif annotated is not None and report.size != annotated:
                self._add(split, "size", f"{name}: file {report.size[0]}x{report.size[1]}, "
                                         f"annotated {annotated[0]}x{annotated[1]}")
            if annotated is not None or report.size is not None:
                sizes[image_id] = annotated or report.size
        return sizes

    @staticmethod
    def _check_boxes(annotations: CocoAnnotations, sizes: dict[int, tuple[int, int]]) -> tuple[int, list[str]]:
        """The number of clipped boxes, and the mostly-outside ones described for the error message
        (by image and box: load_coco renumbers annotation ids of files that use id 0)."""
        clipped, outside = 0, []
        for image_id, anns in annotations.annotations_by_image.items():
            if image_id not in sizes:
                continue
            width, height = sizes[image_id]
            for ann in anns:
                placement = box_placement(ann["bbox"], width, height)
                if placement == "clipped":
                    clipped += 1
                elif placement == "outside":
                    bbox = ", ".join(f"{v:g}" for v in ann["bbox"])
                    image = image_relative_path(annotations.images[image_id])
                    outside.append(f"[{bbox}] on {image} (image id {image_id}, {width}x{height})")
        return clipped, outside

    def _add(self, split: str, kind: str, example: str) -> None:
        self.findings.setdefault((split, kind), []).append(example)

    def paragraph(self) -> str:
        """All findings of the dataset as one paragraph: per split, the annotation file and image
        folder, each kind of problem with its count and first examples, then the fixes."""
        parts = []
        for split in dict.fromkeys(split for split, _ in self.findings):
            found = [(kind, examples) for (at, kind), examples in self.findings.items() if at == split]
            sentences = [example for kind, examples in found if kind == "file" for example in examples]
            counted = [(kind, examples) for kind, examples in found if kind != "file"]
            if counted:
                image_dir, annotations_path = self.spec.split_paths(split, self.data_root, self.cache_root)
                listed = "; ".join(f"{len(examples)} {_FINDINGS[kind][0]} ({_first(examples)})"
                                   for kind, examples in counted)
                fixes = "; ".join(dict.fromkeys(_FINDINGS[kind][1] or self._box_fix() for kind, _ in counted))
                sentences.append(f"In {annotations_path} and {image_dir}, {listed}. To fix: {fixes}.")
            parts.append(f"Split {split!r}: " + " ".join(sentences))
        return f"Dataset {self.spec.name!r} failed the {self.level} data check; nothing was run. " + " ".join(parts)

    def _box_fix(self) -> str:
        entry = f"its catalog entry ({self.spec.source})" if self.spec.source else "its catalog entry"
        return (f"correct or remove the invalid boxes in the annotation file, or set invalid_boxes: drop in {entry} "
                "to train without them")


class _Stamps:
    """Records of passed split checks, keyed by everything that would change the verdict."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def key(image_dir: Path, annotations: Path, spec: DatasetSpec) -> list:
        """What a stamp vouches for: the files and the entry's keys that change how they are read. The
        image folder's mtime changes when files are added, removed or renamed in it, not when one is
        rewritten in place: the cheap check accepts that blind spot."""
        ann, images = annotations.stat(), image_dir.stat()
        return [CHECK_VERSION, str(annotations.resolve()), ann.st_size, ann.st_mtime_ns, str(image_dir.resolve()),
                images.st_mtime_ns, spec.invalid_boxes] + (["roboflow-placeholder"] if spec.roboflow_placeholder else [])

    def _path(self, key: list, level: str) -> Path:
        digest = hashlib.sha256(json.dumps(key + [level]).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def find(self, key: list, level: str) -> SplitSummary | None:
        """The summary of a passed check at ``level`` or above, if one is stamped."""
        for stamped_level in LEVELS[LEVELS.index(level):]:
            try:
                fields = json.loads(self._path(key, stamped_level).read_text())
                return SplitSummary(**{**fields, "from_stamp": True})
            except (OSError, ValueError, TypeError):  # no stamp, or an unreadable one: check again
                continue
        return None

    def write(self, key: list, summary: SplitSummary) -> None:
        path = self._path(key, summary.level)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(asdict(summary)))
            partial.replace(path)  # atomic: a concurrent sweep never reads half a stamp
        except OSError as err:
            raise BenchError(
                f"The data check cannot write its record to {self.folder} ({err}). Point --cache-dir or "
                "BENCH_CACHE_DIR at a writable folder."
            ) from None


def _annotated_size(image: dict) -> tuple[int, int] | None:
    """``(width, height)`` of an ``images`` entry when it gives both as numbers (else the file's
    header size stands in)."""
    size = (image.get("width"), image.get("height"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size):
        return size
    return None


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
        return f.read()


def _first(examples: list[str]) -> str:
    if len(examples) <= MAX_EXAMPLES:
        return ", ".join(examples)
    return f"first {MAX_EXAMPLES}: " + ", ".join(examples[:MAX_EXAMPLES])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
