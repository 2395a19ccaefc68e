"""Sweep files: ``run_bench.py --config sweep.yaml`` takes the same fields as the command line.

A long comparison (methods, suite, shots, seeds, tuning budget, protocol changes) is easier to keep,
review and share as a file than as a command. The file's keys are the long option names, with
dashes or underscores (``method-set`` or ``method_set``); its values are what the option takes, in
YAML's types::

    model: glip-t
    methods: [sdpt, vpt, lora]      # or "sdpt,vpt,lora"
    suite: odinw13
    shots: [1, 3, 5, 10, full]
    seeds: [0, 1, 2]
    method-set: {sdpt.num_tokens: 8}
    protocol-set: {max_steps: 500}
    dry-run: false

The file becomes command-line words placed before the real ones (:func:`config_arguments`), so it
goes through exactly the parsing and checks a command does, and a flag given on the command line
overrides the file's value (for ``method-set`` and ``protocol-set``, key by key).
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from bench.errors import BenchError

OPTION = "--config"


@dataclass(frozen=True)
class SweepFile:
    """A loaded sweep file: where it is, its text as written (kept in the sweep log) and its words."""

    path: Path
    text: str
    arguments: tuple[str, ...]


def split_config_option(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """``(the --config path or None, argv without it)``; ``--config`` may be given once."""
    rest, paths = [], []
    words = iter(argv)
    for word in words:
        if word == OPTION:
            value = next(words, None)
            if value is None:
                raise BenchError(f"{OPTION} needs a file: {OPTION} sweep.yaml (see sweeps/ for examples).")
            paths.append(value)
        elif word.startswith(OPTION + "="):
            paths.append(word.partition("=")[2])
        else:
            rest.append(word)
    if len(paths) > 1:
        raise BenchError(f"{OPTION} was given {len(paths)} times ({', '.join(paths)}); give one sweep file.")
    return (Path(paths[0]) if paths else None), rest


def load_sweep_file(path: Path, parser: argparse.ArgumentParser) -> SweepFile:
    """Read ``path`` and turn it into command-line words for ``parser``, refusing in one paragraph a file
    that is missing, not YAML, not a mapping, or has a key that is no option or a value of the wrong kind."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchError(f"The sweep file {path} does not exist; pass {OPTION} an existing YAML file (see sweeps/).") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"The sweep file {path} cannot be read ({err}); pass {OPTION} a UTF-8 YAML file.") from None
    try:
        fields = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise BenchError(f"The sweep file {path} is not valid YAML{at} ({getattr(err, 'problem', err)}); fix the file.") from None
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise BenchError(f"The sweep file {path} holds a YAML {type(fields).__name__}, not a mapping of options; write "
                         "one option a line, e.g. `methods: [sdpt, lora]`.")
    return SweepFile(path, text, tuple(config_arguments(fields, parser, path)))


def config_arguments(fields: dict[Any, Any], parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The command-line words that say what ``fields`` say."""
    actions = {option.lstrip("-"): action for action in parser._actions for option in action.option_strings
               if option.startswith("--")}
    words: list[str] = []
    for key, value in fields.items():
        name = str(key).replace("_", "-")
        if name == OPTION.lstrip("-"):
            raise BenchError(f"The sweep file {path} names another sweep file (config: {value}); sweep files do not nest.")
        action = actions.get(name)
        if action is None or name == "help":
            close = difflib.get_close_matches(name, list(actions), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(f"The sweep file {path} has the key {key!r}, which is no option of run_bench.py.{hint} "
                             "Its keys are the long options without dashes (run_bench.py --help lists them).")
        words += _option_words(f"--{name}", action, value, path)
    return words


def _option_words(option: str, action: argparse.Action, value: Any, path: Path) -> list[str]:
    def refuse(expected: str) -> BenchError:
        return BenchError(f"The sweep file {path}: {option.lstrip('-')} is {json.dumps(value, default=str)}, but it takes "
                          f"{expected}; fix that line (or drop it and pass {option} on the command line).")

    if action.nargs == 0:  # a switch, e.g. dry-run
        if not isinstance(value, bool):
            raise refuse("true or false")
        return [option] if value else []
    if action.nargs == "?" and isinstance(value, bool):  # check-data: true for the default level
        return [option] if value else []
    if isinstance(action, argparse._AppendAction):  # method-set, protocol-set: KEY=VALUE pairs
        if not isinstance(value, dict):
            raise refuse("a mapping of KEY: VALUE, e.g. {sdpt.num_tokens: 8}")
        return [word for key, item in value.items() for word in (option, f"{key}={json.dumps(item)}")]
    if isinstance(value, dict):
        raise refuse("one value or a list")
    if isinstance(value, list):
        if any(isinstance(item, (dict, list)) for item in value):
            raise refuse("a list of plain values")
        return [option, ",".join(_word(item) for item in value)]
    if value is None:
        raise refuse("a value")
    return [option, _word(value)]


def _word(value: Any) -> str:
    """A YAML scalar as typed on a command line (``true``, not ``True``)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)
