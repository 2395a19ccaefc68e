"""Methods made of other methods: ``sdpt+lora`` installs SDPT, then LoRA, and trains both.

:func:`compose` builds such a method from registered parts. Its config is flat, so it round-trips
through JSON and rejects unknown options like every other config: one shared ``lr`` and
``weight_decay`` (defaults: those of the part with the lowest default lr), then each part's own fields prefixed with the part's
name (``sdpt_num_tokens``, ``lora_rank``, ...) and the part's defaults. The defaults' sources and the
fields' types and limits come with them: the shared fields carry that part's, each prefixed field its
part's; building a composite config also builds each part's config, so the parts' further checks
(``MethodConfig.refuse``) run too, under the composite's option names. Each part's
``install`` leaves the others' parameters as they are (the method contract), so installing in order
composes; the trainable count is the sum of the parts' formulas.

``sdpt+lora``: the SDPT paper states that its prototype tokens are compatible with other PEFT modules.
SDPT is installed first, so its pseudo-inverses come from the frozen pre-trained projections, which
LoRA then wraps (SDPT holds the original ``nn.Linear`` objects, not peft's wrappers).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import ClassVar

from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.options import OptionValueError, field_types
from bench.tuning.base import METHODS, Method, MethodConfig, register_method

SHARED_FIELDS = ("lr", "weight_decay")


def _prefix(part: str) -> str:
    return part.replace("-", "_").replace("+", "_")


def part_config(config: MethodConfig, part: str, cls: type[Method]) -> MethodConfig:
    """The config of ``part``: its prefixed fields of ``config`` plus the shared optimiser settings."""
    values = {f: getattr(config, f) for f in SHARED_FIELDS}
    for field in dataclasses.fields(cls.config_class):
        if field.name not in SHARED_FIELDS:
            values[field.name] = getattr(config, f"{_prefix(part)}_{field.name}")
    return cls.config_class(**values)


class CompositeMethod(Method):
    """Installs ``parts`` in order; subclasses are made by :func:`compose`."""

    parts: ClassVar[tuple[tuple[str, type[Method]], ...]] = ()

    def part_methods(self) -> list[Method]:
        """Each part bound to its slice of this config."""
        return [cls(part_config(self.config, part, cls)) for part, cls in self.parts]

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        chosen: set[int] = set()
        for (part, _), method in zip(self.parts, self.part_methods()):
            installed = method.install(model)
            overlap = sorted(n for n, p in installed.items() if id(p) in chosen)
            if overlap:
                raise BenchError(f"{self.name}: the part {part!r} trains parameters another part already trains: {overlap[:3]}.")
            chosen |= {id(p) for p in installed.values()}
        # By identity, under the names they have now: a later part may rename an earlier part's
        # parameters (peft moves a wrapped layer's weight and bias under ``base_layer``).
        return {n: p for n, p in model.named_parameters() if id(p) in chosen}

    def expected_trainable(self, model: DetectorBase) -> int:
        return sum(method.expected_trainable(model) for method in self.part_methods())

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The sum of the parts' counts: each part trains tensors of its own, acting through different
        extension points (or, for ``sdpt+lora``, prompt rows and weight updates), so no part can
        reproduce another's directions."""
        return sum(method.effective_trainable(model, text_positions) for method in self.part_methods())


def compose(name: str, parts: tuple[str, ...]) -> type[CompositeMethod]:
    """A method class (not yet registered) that installs the registered methods ``parts`` in order."""
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise BenchError(f"A composite method needs at least two distinct parts, got {parts!r}.")
    classes = tuple((part, METHODS.get(part)) for part in parts)
    # One optimiser setting serves every part: the part with the lowest default lr gives it. Too high a
    # rate can make a weight update (LoRA) diverge; too low a rate only makes prompts move slower.
    slowest = min((cls.config_class for _, cls in classes), key=lambda config: config().lr)
    fields: list[tuple[str, object, dataclasses.Field]] = [
        (f.name, field_types(slowest)[f.name], dataclasses.field(default=getattr(slowest(), f.name)))
        for f in dataclasses.fields(slowest) if f.name in SHARED_FIELDS
    ]
    sources = {shared: f"ours: the lowest-lr part's setting, shared by all parts; its source: {slowest.sources[shared]}"
               for shared in SHARED_FIELDS if shared in slowest.sources}
    limits = {shared: slowest.limits[shared] for shared in SHARED_FIELDS if shared in slowest.limits}
    for part, cls in classes:
        defaults = cls.config_class()
        for f in dataclasses.fields(cls.config_class):
            if f.name not in SHARED_FIELDS:
                field_name = f"{_prefix(part)}_{f.name}"
                fields.append((field_name, field_types(cls.config_class)[f.name], dataclasses.field(default=getattr(defaults, f.name))))
                if f.name in cls.config_class.sources:
                    sources[field_name] = cls.config_class.sources[f.name]
                if f.name in cls.config_class.limits:
                    limits[field_name] = cls.config_class.limits[f.name]

    def check_parts(config: MethodConfig) -> None:
        """Every field's own check, then each part's further checks (by building its config), reported
        under the composite's option names."""
        MethodConfig.__post_init__(config)
        for part, cls in classes:
            try:
                part_config(config, part, cls)
            except OptionValueError as error:
                config.refuse(f"{_prefix(part)}_{error.bad.option}", error.bad.expected)

    stem = "".join(_prefix(p).title().replace("_", "") for p in parts)
    module = sys.modules[__name__]
    config_class = dataclasses.make_dataclass(f"{stem}Config", fields, bases=(MethodConfig,), frozen=True,
                                              namespace={"sources": sources, "limits": limits, "__post_init__": check_parts})
    config_class.__module__ = __name__
    config_class.__doc__ = f"Config of {name!r}: shared lr and weight_decay, then each part's fields prefixed with its name."
    method_class = type(stem, (CompositeMethod,), {
        "parts": classes,
        "identity_at_init": all(cls.identity_at_init for _, cls in classes),
        "__module__": __name__,
        "__doc__": f"{' then '.join(parts)}, installed in that order.",
    })
    method_class.name, method_class.config_class = name, config_class
    setattr(module, config_class.__name__, config_class)  # picklable by name, like any module-level class
    setattr(module, method_class.__name__, method_class)
    return method_class


def register_composite(name: str, parts: tuple[str, ...], description: str) -> type[CompositeMethod]:
    method_class = compose(name, parts)
    return register_method(name, method_class.config_class, description)(method_class)


import methods.peft_tuners  # noqa: E402,F401  (the parts must be registered first)
import methods.sdpt  # noqa: E402,F401

register_composite("sdpt+lora", ("sdpt", "lora"), "SDPT prototype tokens plus LoRA (peft) on the fusion projections, trained together")
