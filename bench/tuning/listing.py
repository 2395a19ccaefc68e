"""The methods section of ``--list``: every registered method with its presets, and with ``--verbose``
every config field's default, the values it accepts, and the source of the default.

Sources are shown because a default is only the centre of ``--tune``'s search and the rate at which a
plain comparison runs; a reader choosing between methods should see which defaults come from a paper,
which from official code, and which are ours.
"""

from __future__ import annotations

import dataclasses
import json

from bench.options import describe, field_types
from bench.tuning.base import METHODS, MethodConfig
from bench.tuning.presets import SEPARATOR, presets_of

NAME_WIDTH = 22
INDENT = "      "


def describe_methods(verbose: bool = False) -> str:
    """The ``Methods:`` section of ``--list`` as text (no trailing newline), in the layout of the other
    sections: one line per method, its presets below it as ``@name``; ``verbose`` adds every config
    field as ``name = default (accepted values)  source`` and each preset's options and source."""
    lines = [f"Methods (write method{SEPARATOR}preset for a method with a preset's options):"]
    for entry in METHODS.declared():
        lines.append(f"  {entry.name:<{NAME_WIDTH}} {entry.description}")
        if verbose:
            lines += _field_lines(entry.obj.config_class)
        for preset in presets_of(entry.name):
            lines.append(f"    {SEPARATOR + preset.name:<{NAME_WIDTH - 2}} {preset.description}")
            if verbose:
                lines.append(f"{INDENT}options: {json.dumps(dict(preset.options))}")
                lines.append(f"{INDENT}source: {preset.source}")
    lines.append(f"  {'a+b[+c]':<{NAME_WIDTH}} any of these composed, installed in order and trained together, e.g. "
                 "sdpt+bitfit; options per part: --method-set sdpt+bitfit.sdpt.num_tokens=8")
    return "\n".join(lines)


def _field_lines(config_class: type[MethodConfig]) -> list[str]:
    """``name = default (accepted values)  source`` for every field of ``config_class``, defaults
    written as JSON (the syntax of ``--method-set``)."""
    defaults, annotations = config_class(), field_types(config_class)
    settings = [(f"{f.name} = {json.dumps(getattr(defaults, f.name))} ({describe(annotations[f.name], config_class.limits.get(f.name))})",
                 config_class.sources.get(f.name, "(no source)"))
                for f in dataclasses.fields(config_class)]
    width = max(len(setting) for setting, _ in settings)
    return [f"{INDENT}{setting:<{width}}  {source}" for setting, source in settings]
