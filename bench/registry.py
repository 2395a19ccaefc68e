"""One generic name -> factory registry, used for models, methods, suites and evaluator backends.

Entries register themselves where they are defined (``@MODELS.register("glip-t", ...)``), so adding a
model or a method never touches the harness; ``--list`` and error messages read the registry.

A registry of plugins that live outside the framework (the tuning methods of the ``methods``
package, or a user's own package) names a Python entry-point group (``[project.entry-points]`` in
``pyproject.toml``; ``importlib.metadata.entry_points``). The group's modules are imported the first
time the registry is read, so the framework never imports a plugin package by name: the arrow goes
from the plugin to the framework only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import BenchError, UnknownNameError

T = TypeVar("T")
MAX_SUGGESTIONS = 3
MAX_LISTED_NAMES = 60  # above this, an unknown-name message points at --list instead of listing every name


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object and the one-line description shown by ``--list``; ``on_demand``: made by a
    resolver for a name asked for (a composition), not declared by a plugin."""

    name: str
    obj: T
    description: str
    on_demand: bool = False


class Registry(Generic[T]):
    """Maps names to objects (factories, classes, specs) of one kind, e.g. "method".

    Lookups of unknown names raise :class:`UnknownNameError` listing every valid name and the closest
    match, because a typo on a command line is the most common way to get here.
    """

    def __init__(self, kind: str, plugin_group: str | None = None) -> None:
        self.kind = kind
        self.plugin_group = plugin_group
        self._entries: dict[str, Entry[T]] = {}
        self._resolvers: list[Callable[[str], tuple[T, str] | None]] = []
        self._plugins_loaded = plugin_group is None

    def _load_plugins(self) -> None:
        """Import every module of :attr:`plugin_group` once (their definitions register themselves)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # before importing: a plugin that reads the registry must not recurse
        found = metadata.entry_points(group=self.plugin_group)
        if not found:
            raise BenchError(
                f"No {self.kind} plugins are installed (entry-point group {self.plugin_group!r} is empty): install the "
                "project into this environment (pip install -e . or make install), which declares them in pyproject.toml."
            )
        for entry_point in sorted(found, key=lambda e: e.name):
            entry_point.load()

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the object unchanged."""

        def decorate(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorate

    def add(self, name: str, obj: T, description: str = "", *, on_demand: bool = False) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice; names must be unique.")
        if not description:
            doc = getattr(obj, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, obj, description, on_demand)

    def add_resolver(self, resolve: Callable[[str], tuple[T, str] | None]) -> None:
        """Let ``resolve`` make entries for names nobody registered (``sdpt+bitfit``: any composition of
        registered methods): it returns ``(object, description)``, or None for a name it does not make.
        A resolved name is registered, so it is made once; an error it raises reaches the user."""
        self._resolvers.append(resolve)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self._load_plugins()
        if name not in self._entries:
            for resolve in self._resolvers:
                made = resolve(name)
                if made is not None:
                    self.add(name, *made, on_demand=True)
                    break
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_name_message(name)) from None

    def unknown_name_message(self, name: str) -> str:
        """The closest names (all of them when several are equally close: 'odinw' is as near 'odinw13'
        as 'odinw35'), then every valid name, or, for long registries (300 datasets), where to see them."""
        if len(self._entries) > MAX_LISTED_NAMES:
            valid = f"{len(self._entries)} {self.kind} names, listed by python run_bench.py --list --verbose"
        else:
            valid = f"Valid {self.kind} names: " + (", ".join(sorted(self._entries)) or "(none registered)")
        close = difflib.get_close_matches(name, sorted(self._entries), n=MAX_SUGGESTIONS)
        best = sorted(c for c in close if _similarity(name, c) == _similarity(name, close[0]))
        hint = f" Did you mean {' or '.join(repr(c) for c in best)}?" if best else ""
        return f"Unknown {self.kind} {name!r}.{hint} {valid}."

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def declared(self) -> list[Entry[T]]:
        """The entries the plugins declared, by name: what ``--list`` and the README's tables show,
        whichever names this process has resolved on demand."""
        return [entry for entry in self if not entry.on_demand]

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()
