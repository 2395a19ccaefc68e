"""Methods made of other methods: ``sdpt+lora``, and any ``a+b[+c]`` of registered methods, on demand.

:func:`compose` builds such a method from registered parts; :func:`resolve_composite` lets the method
registry make one for any name of the form ``a+b`` (``--methods sdpt+bitfit,coop+vpt,sdpt+peft:ia3``),
so nothing has to be declared in advance. Its config is flat, so it round-trips through JSON and
rejects unknown options like every other config: one shared ``lr`` and ``weight_decay`` (defaults:
those of the part with the lowest default lr), then each part's own fields prefixed with the part's
name (``sdpt_num_tokens``, ``lora_rank``, ``peft_ia3_...``) and the part's defaults; an option may also
be addressed as ``part.field`` (``--method-set sdpt+lora.lora.rank=8``). The defaults' sources and the
fields' types and limits come with them: the shared fields carry that part's, each prefixed field its
part's; building a composite config also builds each part's config, so the parts' further checks
(``MethodConfig.refuse``) run too, under the composite's option names.

Each part's ``install`` leaves the others' parameters as they are (the method contract), so
installing in order composes, and the trainable count is the sum of the parts' formulas, as long as
the parts do not claim the same thing. Two kinds of claim are checked while installing, and a clash
is refused naming both parts and what they share: a parameter trained by two parts (``full+bitfit``:
the biases), and an extension slot both declare (``coop+maple``: both fill the text encoder's
``input_embedding_hook``; checked before installing, and again after each part). Two peft methods
(``lora+ia3``) are refused as well: :func:`methods.peft_tuners.inject` does not inject into a model that
already holds peft adapters.

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
from bench.models.base import SLOT_NAMES, DetectorBase
from bench.options import OptionValueError, field_types
from bench.tuning.base import METHODS, Method, MethodConfig, register_method

SHARED_FIELDS = ("lr", "weight_decay")


PART_SEPARATOR = "+"


def _prefix(part: str) -> str:
    """A part's name as a field-name prefix: ``peft:ia3`` -> ``peft_ia3``."""
    return "".join(c if c.isalnum() else "_" for c in part)


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
        refuse_shared_slots(self.name, self.parts)
        chosen: dict[int, str] = {}  # parameter id -> the part that trains it
        claims: dict[tuple[str, str], str] = {}  # (module, slot or wrapped layer) -> the part that filled it
        for (part, _), method in zip(self.parts, self.part_methods()):
            before = filled_slots(model)
            try:
                installed = method.install(model)
            except BenchError as error:  # a part that checks its own slots: say which part it met
                raise BenchError(f"{self.name}: {part!r} cannot be installed after {', '.join(sorted(set(chosen.values())))}"
                                 f": {error}") from None
            overlap = sorted(n for n, p in installed.items() if id(p) in chosen)
            if overlap:
                owner = chosen[id(installed[overlap[0]])]
                raise BenchError(f"{self.name}: the parts {owner!r} and {part!r} both train {overlap[0]}"
                                 f"{f' (and {len(overlap) - 1} more)' if len(overlap) > 1 else ''}; compose methods that "
                                 "train different parameters.")
            for place, occupant in filled_slots(model).items():
                if place in claims and before.get(place) != occupant:
                    raise BenchError(f"{self.name}: the parts {claims[place]!r} and {part!r} both fill {place[1]} of "
                                     f"{place[0] or 'the model'}; one extension point holds one method, so compose "
                                     "methods that use different ones.")
                claims.setdefault(place, part)
            chosen.update({id(p): part for p in installed.values()})
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
    keyed_when_set = {f"{_prefix(part)}_{name}": value for part, cls in classes
                      for name, value in cls.config_class.keyed_when_set.items()}
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

    @classmethod
    def from_dict(cls: type[MethodConfig], values: dict | None = None) -> MethodConfig:
        """``part.field`` keys (``lora.rank``) as their prefixed fields (``lora_rank``), then as any config."""
        named = {}
        for key, value in (values or {}).items():
            part, dot, field = key.rpartition(".")
            named[f"{_prefix(part)}_{field}" if dot and part in parts else key] = value
        return MethodConfig.from_dict.__func__(cls, named)

    stem = "".join(_prefix(p).title().replace("_", "") for p in parts)
    module = sys.modules[__name__]
    config_class = dataclasses.make_dataclass(f"{stem}Config", fields, bases=(MethodConfig,), frozen=True,
                                              namespace={"sources": sources, "limits": limits, "keyed_when_set": keyed_when_set,
                                                         "__post_init__": check_parts,
                                                         "from_dict": from_dict})
    config_class.__module__ = __name__
    config_class.__doc__ = f"Config of {name!r}: shared lr and weight_decay, then each part's fields prefixed with its name."
    method_class = type(stem, (CompositeMethod,), {
        "parts": classes,
        "identity_at_init": all(cls.identity_at_init for _, cls in classes),
        "slots": tuple(dict.fromkeys(slot for _, cls in classes for slot in cls.slots)),
        "family": "composition",
        "__module__": __name__,
        "__doc__": f"{' then '.join(parts)}, installed in that order.",
    })
    method_class.name, method_class.config_class = name, config_class
    setattr(module, config_class.__name__, config_class)  # picklable by name, like any module-level class
    setattr(module, method_class.__name__, method_class)
    return method_class


def register_composite(name: str, parts: tuple[str, ...], description: str) -> type[CompositeMethod]:
    method_class = compose(name, parts)
    return register_method(name, method_class.config_class, description, family="composition")(method_class)


def resolve_composite(name: str) -> tuple[type[CompositeMethod], str] | None:
    """The composite method a name like ``sdpt+bitfit`` asks for (None for a name without ``+``): its
    parts are looked up by name, so a misspelt part is reported as an unknown method."""
    if PART_SEPARATOR not in name:
        return None
    parts = tuple(name.split(PART_SEPARATOR))
    for part in parts:
        METHODS.get(part)  # an unknown part: the registry's own message, with the closest names
    method_class = compose(name, parts)
    method_class.description = f"{' plus '.join(parts)}, installed in that order and trained together"
    return method_class, method_class.description


def refuse_shared_slots(name: str, parts: tuple[tuple[str, type[Method]], ...]) -> None:
    """Refuse, before anything is installed, parts that declare the same extension slot (``Method.slots``)."""
    for i, (first, first_class) in enumerate(parts):
        for second, second_class in parts[i + 1:]:
            shared = [slot for slot in first_class.slots if slot in second_class.slots]
            if shared:
                raise BenchError(f"{name}: the parts {first!r} and {second!r} both fill {', '.join(shared)}; one extension "
                                 "point holds one method, so compose methods that use different ones (--list shows them).")


def filled_slots(model: nn.Module) -> dict[tuple[str, str], int]:
    """What occupies the model's extension points now: ``(module name, slot) -> id(occupant)`` for
    every filled slot."""
    filled = {}
    for name, module in model.named_modules():
        for slot in SLOT_NAMES:
            occupant = getattr(module, slot, None)
            if occupant is not None:
                filled[(name, slot)] = id(occupant)
    return filled


import methods.peft_tuners  # noqa: E402,F401  (the parts must be registered first)
import methods.sdpt  # noqa: E402,F401

register_composite("sdpt+lora", ("sdpt", "lora"), "SDPT prototype tokens plus LoRA (peft) on the fusion projections, trained together")
METHODS.add_resolver(resolve_composite)
