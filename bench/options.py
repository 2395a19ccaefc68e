"""Checking option values (method configs, training protocols) against their types and ranges.

Options arrive from the command line as JSON where they parse and as text otherwise
(``--method-set sdpt.num_tokens=abc`` gives the string ``"abc"``), and from presets and stored
configs. A config or protocol checks every field when it is built, against the field's annotation and
a declared :class:`Range`, so a bad value is refused while the sweep is planned instead of failing
later inside a cell with a ``TypeError`` from deep in a method. The message is one paragraph (see
:mod:`bench.errors`): the option, the value and its kind, what is expected, and how to set it.

Supported annotations: ``int`` (a ``bool`` is not an int here), ``float`` (an int is accepted and
stored as a float), ``bool``, ``str``, ``Literal[...]``, ``tuple[X, ...]`` (a JSON list; each item
is checked, a range applies to each item), ``X | None``, ``Mapping[K, V]`` and ``Any``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from bench.errors import BenchError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option (of each item, for a list option): ``low`` and, when given,
    ``high``; ``*_open`` excludes that bound itself."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_ONE = Range(1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)


@dataclass(frozen=True)
class BadValue:
    """A value that fits neither its option's type nor its range; what an error message is made of."""

    option: str
    value: Any
    expected: str

    def message(self, owner: str, setting: str, example: Any, example_is: str, origin: str = "") -> str:
        """One paragraph, e.g. "sdpt option num_tokens must be an integer >= 1, got 'abc' (text). Set it
        with --method-set sdpt.num_tokens=100 (the default)."; ``origin`` says where the value came from."""
        kind = _kind(self.value)
        return (f"{owner} option {self.option} must be {self.expected}, got {_shown(self.value)}"
                f"{f' ({kind})' if kind else ''}{origin}. Set it with {setting}={command_line(example)} ({example_is}).")


class OptionValueError(BenchError):
    """An option value of the wrong type or out of range; ``bad`` lets a caller that knows more (the
    method's registered name, the protocol's own value) say it again in its own terms."""

    def __init__(self, message: str, bad: BadValue) -> None:
        super().__init__(message)
        self.bad = bad

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes despite two arguments
        return type(self), (str(self), self.bad)


def check_fields(instance: Any, limits: Mapping[str, Range], owner: str, setting: str) -> None:
    """Check every field of the frozen dataclass ``instance`` against its annotation and ``limits``,
    storing the normalised value (ints of float fields as floats, lists as tuples).

    ``owner`` and ``setting`` (a format string with ``{option}``) word the error, whose example value is
    the field's default."""
    annotations = field_types(type(instance))
    for f in dataclasses.fields(instance):
        value, limit = getattr(instance, f.name), limits.get(f.name)
        try:
            normalised = _normalised(value, annotations[f.name], limit)
        except _Mismatch:
            bad = BadValue(f.name, value, describe(annotations[f.name], limit))
            raise OptionValueError(bad.message(owner, setting.format(option=f.name), field_default(f), "the default"), bad) from None
        object.__setattr__(instance, f.name, normalised)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's annotation, resolved (``from __future__ import annotations`` leaves strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# How describe() names a plain type, singular and plural.
_NOUNS: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("text", "text items"),
}


def describe(annotation: Any, limit: Range | None = None, plural: bool = False) -> str:
    """What ``annotation`` (within ``limit``) accepts, in words: "an integer >= 1", "a list of integers
    >= 0 or null", "one of 'deep', 'shallow'"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        text = " or ".join(describe(member, limit, plural) for member in args if member is not type(None))
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        choices = ", ".join(repr(choice) for choice in args)
        return f"values among {choices}" if plural else f"one of {choices}"
    if origin is tuple:
        return f"{'lists' if plural else 'a list'} of {describe(args[0], limit, plural=True)}"
    if origin is Mapping:
        return "mappings" if plural else "a mapping"
    if annotation is Any:
        return "any values" if plural else "any value"
    singular, several = _NOUNS[annotation]
    noun = several if plural else singular
    return f"{noun} {limit}" if limit is not None and annotation in (int, float) else noun


def command_line(value: Any) -> str:
    """``value`` as written after ``KEY=`` on the command line: JSON, except text that JSON would not
    read as something else (``uniform``, not ``"uniform"``)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, separators=(",", ":"))


class _Mismatch(Exception):
    """A value does not fit an annotation (internal: :func:`check_fields` turns it into the message)."""


def _normalised(value: Any, annotation: Any, limit: Range | None) -> Any:
    """``value`` as the field stores it, or :class:`_Mismatch` when it does not fit."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in (m for m in args if m is not type(None)):
            try:
                return _normalised(value, member, limit)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise _Mismatch
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        return tuple(_normalised(item, args[0], limit) for item in value)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise _Mismatch
        keys, values = args
        return {_normalised(k, keys, None): _normalised(v, values, None) for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is bool or annotation is str:
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    if annotation is int or annotation is float:
        number = isinstance(value, int) or (annotation is float and isinstance(value, float) and math.isfinite(value))
        if not number or isinstance(value, bool) or (limit is not None and value not in limit):
            raise _Mismatch
        return float(value) if annotation is float else value
    raise TypeError(f"bench.options cannot check values of the annotation {annotation!r}; add it to _normalised.")


def _kind(value: Any) -> str:
    """The JSON kind of ``value`` in words, as the user typed it ('' for null, which says it already)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (tuple, list)):
        return "a list"
    return "a mapping" if isinstance(value, Mapping) else type(value).__name__


def _shown(value: Any) -> str:
    """``value`` as the user wrote it: text quoted, everything else as JSON."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=repr)


def key_value_argument(value: str) -> tuple[str, Any]:
    """An argparse type for ``key=value``: the value read as JSON when it parses (numbers, lists,
    true), else as text."""
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    key, raw = value.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw
