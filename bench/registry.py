"""One generic name -> factory registry, used for models, methods, suites and evaluator backends.

Entries register themselves where they are defined (``@MODELS.register("glip-t", ...)``), so adding a
model or a method never touches the harness; ``--list`` and error messages read the registry.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object and the one-line description shown by ``--list``."""

    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Maps names to objects (factories, classes, specs) of one kind, e.g. "method".

    Lookups of unknown names raise :class:`UnknownNameError` listing every valid name and the closest
    match, because a typo on a command line is the most common way to get here.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the object unchanged."""

        def decorate(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorate

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice; names must be unique.")
        if not description:
            doc = getattr(obj, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, obj, description)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_name_message(name)) from None

    def unknown_name_message(self, name: str) -> str:
        valid = ", ".join(sorted(self._entries)) or "(none registered)"
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind} names: {valid}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
