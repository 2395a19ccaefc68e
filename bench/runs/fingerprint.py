"""Content fingerprints of what a run reads: the base weights and a dataset's annotation files.

Base weights are a checkpoint file (GLIP) or a ``from_pretrained`` folder (Grounding DINO); a
folder's fingerprint covers every file in it except hidden ones (the Hugging Face download
metadata under ``.cache/``), by relative path.

Hashing a 700 MB checkpoint or a 450 MB annotation file takes seconds, and planning a sweep needs
every cell's key, so digests are cached in a JSON file next to the run store, keyed by the file's
absolute path, size and modification time (a changed file gets a new digest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.catalog import DatasetSpec
from bench.files import write_atomically

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


class FingerprintCache:
    """SHA-256 digests of files, remembered in ``path`` (a JSON file) across runs and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests: dict[str, str] | None = None
        self._dirty = False

    def _load(self) -> dict[str, str]:
        if self._digests is None:
            try:
                self._digests = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._digests = {}
        return self._digests

    def file_digest(self, path: str | Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        entry = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        digests = self._load()
        if entry not in digests:
            digests[entry] = file_sha256(path)
            self._dirty = True
        return digests[entry]

    def save(self) -> None:
        if self._dirty and self._digests is not None:
            write_atomically(self.path, json.dumps(self._digests, indent=0, sort_keys=True).encode())
            self._dirty = False


def dataset_fingerprint(spec: DatasetSpec, annotation_files: dict[str, Path], cache: FingerprintCache) -> str:
    """The dataset's catalog entry (minus where it was read from) and the digests of its annotation
    files, including the prepared few-shot splits (``fewshot_*.json``) beside the training file,
    which the few-shot sampler uses when they exist."""
    entry = spec.keyed_entry()
    files = {split: cache.file_digest(path) for split, path in annotation_files.items()}
    if "train" in annotation_files:
        for prepared in sorted(annotation_files["train"].parent.glob("fewshot_*.json")):
            files[prepared.name] = cache.file_digest(prepared)
    canonical = json.dumps({"spec": entry, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def weights_fingerprint(weights: str | None, cache: FingerprintCache) -> str | None:
    """The digest of the base weights file or folder (None for a randomly initialised model)."""
    if weights is None:
        return None
    root = Path(weights)
    if not root.is_dir():
        return cache.file_digest(root)[:20]
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    listing = {str(p.relative_to(root)): cache.file_digest(p) for p in files}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:20]
