"""Frozen work done once: outputs of a detector's frozen parts, remembered by the content of their inputs.

A part a detector declares in :meth:`DetectorBase.frozen_parts` (GLIP: the image backbone with its
FPN, and the BERT text encoder) computes a function of its inputs alone whenever nothing in it can
change: no parameter of it requires a gradient, every module of it is in eval mode (no dropout, no
stochastic depth), no extension slot inside it is filled (a visual prompt, a text hook) and no input
requires a gradient. Under those conditions, checked on every call, its output for a batch is a
pure function of the batch, so it is looked up by a hash of the batch's bytes (with its shapes,
dtypes, device kind and autocast state) instead of being computed again:

* the validations and the test of a cell share the features of every evaluation batch (the
  evaluation transform is deterministic and batches keep their order);
* cells that see the same batches share them across processes through the disk layer: the lr
  trials of every frozen-trunk method on one seed draw the same training batches (the data order
  and augmentation depend on the seed, not on the method), and every cell of a dataset evaluates
  the same validation and test batches.

Disk entries live below ``<cache>/<namespace>/<part>/``, where the namespace hashes the part's
weights and buffers, the source files of its module classes and the torch version, so changed
weights or code never read stale features. A hit returns exactly the tensors a computation would
(bit-identical results with the cache on or off: ``tests/test_frozen_cache.py``); the cost is a
hash of each input batch (about 1 ms per MB on a CPU core) and the disk space, capped by
``disk_bytes`` (oldest entries are pruned when a cache is opened; a process stops writing when the
cap is reached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.models.base import SLOT_NAMES, DetectorBase

FrozenCacheMode = Literal["off", "memory", "disk"]
FROZEN_CACHE_MODES: tuple[str, ...] = ("off", "memory", "disk")
DEFAULT_MEMORY_BYTES = 1 << 30  # per process, on the host
DEFAULT_DISK_BYTES = 8 << 30
PRUNE_TO = 0.8  # an over-full disk cache is pruned to this fraction of its cap

Output = torch.Tensor | Sequence[torch.Tensor]


def part_is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` computes a function of its inputs alone: nothing of it trains, every
    submodule is in eval mode, and no extension slot inside it holds anything."""
    for sub in module.modules():
        if sub.training or any(getattr(sub, slot, None) is not None for slot in SLOT_NAMES):
            return False
    return not any(p.requires_grad for p in module.parameters())


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).cpu().numpy())


def batch_key(part: str, inputs: Sequence[torch.Tensor]) -> str:
    """A 128-bit hash of what a part's output depends on besides its weights: the input bytes,
    shapes and dtypes, the device kind and the autocast state."""
    digest = hashlib.blake2b(digest_size=16)
    device = inputs[0].device.type
    autocast = torch.is_autocast_enabled(device)
    header = [part, device, str(autocast), str(torch.get_autocast_dtype(device)) if autocast else ""]
    for tensor in inputs:
        header += [str(tuple(tensor.shape)), str(tensor.dtype)]
    digest.update("|".join(header).encode())
    for tensor in inputs:
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def part_namespace(module: nn.Module, variant: str = "") -> str:
    """A hash of what else a part's output depends on: its weights and buffers (by content), the
    source files of its module classes, the torch version and ``variant`` (the attention kernel)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{torch.__version__}|{variant}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(_tensor_bytes(tensor))
    sources = sorted({inspect.getsourcefile(type(sub)) or type(sub).__qualname__ for sub in module.modules()})
    for source in sources:
        digest.update(source.encode())
        if os.path.isfile(source):
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


@dataclass
class CacheCounters:
    """How often each layer answered (for tests, and the cell's log line)."""

    computed: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    bypassed: int = 0


@dataclass
class FrozenWorkCache:
    """A per-process memory layer (host memory, LRU, ``memory_bytes``) over an optional disk layer
    shared by processes (``disk_root``, ``disk_bytes``). Installed on a model as its ``frozen_work``
    (see :func:`install_frozen_cache`)."""

    parts: dict[str, nn.Module]
    disk_root: Path | None = None
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    disk_bytes: int = DEFAULT_DISK_BYTES
    variant: str = ""
    counters: CacheCounters = field(default_factory=CacheCounters)

    def __post_init__(self) -> None:
        self._memory: OrderedDict[str, tuple[list[torch.Tensor], bool]] = OrderedDict()
        self._memory_used = 0
        self._namespaces: dict[str, str] = {}
        self._disk_budget = 0
        if self.disk_root is not None:
            self._disk_budget = prune_disk_cache(self.disk_root, self.disk_bytes)

    def output(self, part: str, compute: Callable[..., Output], inputs: Sequence[torch.Tensor]) -> Output:
        """``compute(*inputs)``, or the remembered result of the same computation."""
        module = self.parts.get(part)
        if module is None or any(t.requires_grad for t in inputs) or not part_is_frozen(module):
            self.counters.bypassed += 1
            return compute(*inputs)
        key = batch_key(part, inputs)
        found = self._from_memory(key) or self._from_disk(part, key)
        if found is not None:
            tensors, single = found
            device = inputs[0].device
            tensors = [t.to(device, copy=True) for t in tensors]
            return tensors[0] if single else tensors
        result = compute(*inputs)
        single = isinstance(result, torch.Tensor)
        tensors = [result] if single else list(result)
        self.counters.computed += 1
        stored = [t.detach().to("cpu", copy=True) for t in tensors]
        self._remember(key, stored, single)
        self._to_disk(part, key, stored, single)
        return result

    # ----------------------------------------------------------------- memory layer
    def _from_memory(self, key: str) -> tuple[list[torch.Tensor], bool] | None:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            self.counters.memory_hits += 1
        return entry

    def _remember(self, key: str, tensors: list[torch.Tensor], single: bool) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size > self.memory_bytes:
            return
        self._memory[key] = (tensors, single)
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, (old, _) = self._memory.popitem(last=False)
            self._memory_used -= sum(t.numel() * t.element_size() for t in old)

    # ----------------------------------------------------------------- disk layer
    def _path(self, part: str, key: str) -> Path | None:
        if self.disk_root is None:
            return None
        if part not in self._namespaces:
            self._namespaces[part] = part_namespace(self.parts[part], self.variant)
        return self.disk_root / self._namespaces[part] / part / f"{key}.safetensors"

    def _from_disk(self, part: str, key: str) -> tuple[list[torch.Tensor], bool] | None:
        path = self._path(part, key)
        if path is None or not path.is_file():
            return None
        try:
            stored = load_file(path)
        except Exception:  # noqa: BLE001 (a torn or foreign file is a miss, and is replaced)
            return None
        single = "single" in stored
        tensors = [stored[str(i)] for i in range(len(stored) - single)]
        self.counters.disk_hits += 1
        self._remember(key, tensors, single)
        return tensors, single

    def _to_disk(self, part: str, key: str, tensors: list[torch.Tensor], single: bool) -> None:
        path = self._path(part, key)
        size = sum(t.numel() * t.element_size() for t in tensors)
        if path is None or size > self._disk_budget:
            return
        self._disk_budget -= size
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {str(i): t.contiguous() for i, t in enumerate(tensors)}
        if single:
            entries["single"] = torch.zeros(0)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(handle)
        try:
            save_file(entries, temporary)
            os.replace(temporary, path)  # readers see a whole file or none
        finally:
            Path(temporary).unlink(missing_ok=True)


def prune_disk_cache(root: Path, cap: int) -> int:
    """Delete the oldest entries below ``root`` while it holds more than ``cap`` bytes (down to
    :data:`PRUNE_TO` of it); return how many bytes may still be written under the cap."""
    if not root.is_dir():
        return cap
    files = []
    for path in root.rglob("*.safetensors"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # pruned by another process meanwhile
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    used = sum(size for _, size, _ in files)
    if used > cap:
        for _, size, path in sorted(files):
            if used <= cap * PRUNE_TO:
                break
            path.unlink(missing_ok=True)
            used -= size
    return max(0, cap - used)


def install_frozen_cache(model: DetectorBase, mode: FrozenCacheMode, disk_root: Path | None,
                         disk_bytes: int = DEFAULT_DISK_BYTES, variant: str = "") -> FrozenWorkCache | None:
    """Give ``model`` a :class:`FrozenWorkCache` over its declared frozen parts (``mode`` "memory":
    this process only; "disk": shared below ``disk_root``, in a namespace that also names
    ``variant``, whatever else changes the parts' numbers); "off", or a model that declares no
    parts, leaves it without one. Whether a part's output is looked up is decided on every call."""
    parts = model.frozen_parts()
    if mode == "off" or not parts:
        model.frozen_work = None
        return None
    cache = FrozenWorkCache(parts, disk_root if mode == "disk" else None, disk_bytes=disk_bytes, variant=variant)
    model.frozen_work = cache
    return cache


def frozen_cache_summary(mode: str, cache: FrozenWorkCache | None) -> dict[str, int | str]:
    """What a cell's record says of its cache: the mode and how the frozen parts' outputs were obtained."""
    if cache is None:
        return {"mode": mode if mode == "off" else f"{mode} (no frozen parts declared)"}
    return {"mode": mode, **dataclasses.asdict(cache.counters)}
