"""What a tuning method is: a frozen config dataclass plus ``apply(model)``.

``apply`` freezes what the method does not train, installs the method's modules into the model's
declared extension points (:mod:`bench.models.base`), and returns the trainable parameters by their
names in ``model.named_parameters()``. Methods never look at a model's class or name, so every method
runs on every backend that provides the extension points.

Each method module registers itself at its end with :func:`register_method` and is found through the
entry-point group :data:`METHOD_PLUGINS` (:mod:`bench.registry`); the harness and
``--list`` read :data:`METHODS`.
"""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NoReturn, TypeVar

from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.options import NON_NEGATIVE, POSITIVE, BadValue, OptionValueError, Range, check_fields, field_default
from bench.registry import Registry


# What a default's source may be; every entry of ``MethodConfig.sources`` starts with one of these
# and a colon: "paper: <paper and section>", "official code: <repository and file>", "ours: <reason>".
SOURCE_KINDS = ("paper", "official code", "ours")

# How a config's error says to set an option; build_method fills in the method's registered name.
METHOD_SETTING = "--method-set METHOD.{option}"


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's configuration: JSON round trip and strict field checking.

    ``lr`` and ``weight_decay`` are the method's AdamW settings (every method runs under AdamW with
    GLIP's parameter groups, :mod:`bench.train.optim`). ``sources`` maps each field to the one-line
    source of its default (see :data:`SOURCE_KINDS`), so ``--list --verbose`` and ``--tune`` (which
    searches around the defaults) can say where every default comes from. A subclass's ``sources``
    are merged over its parents'; a subclass that changes an inherited default must give that field
    a source of its own, so an inherited source never describes another value.

    Learning rates follow one policy: a method's own published AdamW rate where there is one (GLIP's
    fine-tuning and linear probe 1e-4, GLIP's prompt tuning 0.05, SDPT's released recipe 1e-5);
    otherwise ours, one per family, because SGD rates (CoOp, MaPLe, VPT) do not transfer to AdamW:
    1e-3 for methods that train a small set of weights (bitfit, lora, dora, ia3), 1e-2 for prompt and
    token methods (coop, maple, vpt, sdpt). A default is the centre of ``--tune``'s search (a decade
    each side), not a tuned value.

    Every field is checked when a config is built (:mod:`bench.options`): against its annotation, and
    numbers against ``limits`` (field -> :class:`~bench.options.Range`, merged over the parents' like
    ``sources``), so that a bad ``--method-set`` value is refused while the sweep is planned. Checks
    that need more go in the subclass's ``__post_init__``, after ``super().__post_init__()``, and report
    a bad value with :meth:`refuse`.
    """

    lr: float = 1e-4
    weight_decay: float = 0.05

    sources: ClassVar[Mapping[str, str]] = MappingProxyType({
        "lr": "official code: microsoft/GLIP configs/pretrain/glip_Swin_T_O365.yaml (SOLVER.BASE_LR 0.0001), "
              "the rate of GLIP's fine-tuning",
        "weight_decay": "official code: microsoft/GLIP README, ODinW fine-tuning command (SOLVER.WEIGHT_DECAY 0.05)",
    })
    limits: ClassVar[Mapping[str, Range]] = MappingProxyType({"lr": POSITIVE, "weight_decay": NON_NEGATIVE})
    # Fields added after results existed, with the value that reproduces the runs made before them: keyed
    # only when set otherwise (bench.runs.resolved.keyed_settings).
    keyed_when_set: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = dict(cls.__dict__.get("sources", {}))
        merged = _inherited(cls, "sources")
        stale = [name for name in merged if name in cls.__dict__ and name not in own
                 and _declared_default(cls.__dict__[name]) != _inherited_default(cls, name)]
        if stale:
            raise TypeError(f"{cls.__name__} changes the default of {stale} without a source; add them to its `sources`.")
        cls.sources = MappingProxyType({**merged, **own})
        cls.limits = MappingProxyType({**_inherited(cls, "limits"), **cls.__dict__.get("limits", {})})
        cls.keyed_when_set = MappingProxyType({**_inherited(cls, "keyed_when_set"), **cls.__dict__.get("keyed_when_set", {})})

    def __post_init__(self) -> None:
        """Refuse values of the wrong type or out of ``limits``; store ints given for float fields as floats."""
        check_fields(self, self.limits, owner=type(self).__name__, setting=METHOD_SETTING)

    def refuse(self, option: str, expected: str) -> NoReturn:
        """Raise the error for ``option``'s value, which is not ``expected`` (for the checks of a subclass's
        ``__post_init__``; worded like a type or range error, so build_method names the method in it too)."""
        bad = BadValue(option, getattr(self, option), expected)
        default = field_default({f.name: f for f in dataclasses.fields(self)}[option])
        raise OptionValueError(bad.message(type(self).__name__, METHOD_SETTING.format(option=option), default, "the default"), bad)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None) -> "MethodConfig":
        values = dict(values or {})
        valid = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise BenchError(
                f"Unknown option(s) {unknown} for {cls.__name__}; valid options: "
                + ", ".join(f"{name} (default {field_default(f)!r})" for name, f in valid.items())
                + "."
            )
        for name, value in values.items():
            if isinstance(value, list):  # JSON has no tuples
                values[name] = tuple(value)
        return cls(**values)


def _inherited(cls: type, attribute: str) -> dict[str, Any]:
    """The mapping ``attribute`` (``sources``, ``limits``) of ``cls``'s bases, merged, later bases first."""
    merged: dict[str, Any] = {}
    for base in reversed(cls.__bases__):
        merged.update(getattr(base, attribute, {}))
    return merged


def _declared_default(value: Any) -> Any:
    """A default as written in a class body (a plain value, or a ``dataclasses.field``)."""
    return value.default if isinstance(value, dataclasses.Field) else value


def _inherited_default(cls: type, name: str) -> Any:
    """The default of ``name`` in the nearest base class of ``cls`` that declares it."""
    for base in cls.__mro__[1:]:
        if name in base.__dict__:
            return _declared_default(base.__dict__[name])
    return dataclasses.MISSING


class Method:
    """A tuning method bound to its configuration.

    Subclasses set ``config_class`` and implement :meth:`install` and :meth:`expected_trainable`.
    ``identity_at_init`` declares that the tuned model computes exactly what the base model computes
    until the first optimiser step (zero-initialised offsets, LoRA with B = 0); contract tests check
    the declaration both ways. ``slots`` names the extension slots (:data:`bench.models.base.SLOT_NAMES`)
    that ``install`` fills, so that a composition can refuse two parts that need the same one before
    installing either; contract tests check it against what ``install`` fills.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""  # a key of FAMILIES
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    identity_at_init: ClassVar[bool] = False
    slots: ClassVar[tuple[str, ...]] = ()
    trains: ClassVar[bool] = True  # False: nothing to train (zero-shot), so no seeds and no tuning

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(self.config).__name__}")

    def apply(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        """Freeze the whole model, then :meth:`install`; returns the trainable parameters by name."""
        freeze_all(model)
        return self.install(model)

    def install(self, model: DetectorBase) -> dict[str, nn.Parameter]:
        """Add the method's modules to the model's extension points and mark what it trains.

        Does not freeze anything else, so that methods compose (``sdpt+lora`` installs both).
        """
        raise NotImplementedError

    def expected_trainable(self, model: DetectorBase) -> int:
        """The number of trainable parameters, from the method's own formula (checked by the contract tests)."""
        raise NotImplementedError

    def effective_trainable(self, model: DetectorBase, text_positions: int | None = None) -> int:
        """The degrees of freedom of the trainable tensors that can act on the outputs (the rule is in
        :mod:`bench.tuning.accounting`); here the allocation, which methods with dead or redundant
        directions override, each saying why in its own docstring.

        ``text_positions``: the text token positions the data uses, i.e. the longest caption's token
        count with ``[CLS]`` and ``[SEP]`` (``max(p.num_tokens for p in prompts)``, before any tokens a
        method inserts); None means every text slot. Only methods whose tensors are indexed by text
        position (``glip-prompt``) read it; every method accepts it.
        """
        return self.expected_trainable(model)


# What a method trains, in broad strokes: the families of the README's method table
# (bench.tuning.method_table). Each method declares one when it registers.
FAMILIES: dict[str, str] = {
    "none": "nothing trains",
    "all weights": "every weight of the detector",
    "head": "weights of the detection head",
    "biases": "bias terms, or offsets added to layer outputs",
    "text prompts": "learned vectors in the text encoder's input or features",
    "image prompts": "learned tokens in the vision backbone",
    "text and image prompts": "prompts in both encoders",
    "fusion prototypes": "learned tokens in the image-text fusion space",
    "low-rank updates": "a factored (low-rank, Kronecker, Hadamard, shared-basis) update of frozen weights",
    "rotations": "an orthogonal transform of frozen weights' inputs",
    "scalings and shifts": "learned per-channel scales (and shifts) of activations",
    "sparse or spectral updates": "a weight update from few entries or frequencies",
    "adapters": "small modules added inside the blocks",
    "composition": "two or more of these, trained together",
}


METHOD_PLUGINS = "vl_peft_bench.methods"
"""The entry-point group whose modules define the tuning methods (``methods`` declares itself in pyproject.toml)."""
METHODS: Registry[type[Method]] = Registry("method", plugin_group=METHOD_PLUGINS)

M = TypeVar("M", bound=type[Method])


def register_method(name: str, config_class: type[MethodConfig], description: str, *, family: str) -> Callable[[M], M]:
    """Class decorator: give a method its name, config class and family (a key of :data:`FAMILIES`)
    and add it to :data:`METHODS`."""
    if family not in FAMILIES:
        raise ValueError(f"Method {name!r}: family {family!r} is not one of {', '.join(FAMILIES)} (bench.tuning.base.FAMILIES).")

    def decorate(cls: M) -> M:
        cls.name, cls.config_class, cls.description, cls.family = name, config_class, description, family
        METHODS.add(name, cls, description)
        return cls

    return decorate


def build_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """A registered method with its config built from ``options`` (unknown names and fields are errors).

    ``name`` may name a preset, ``method@preset`` (:mod:`bench.tuning.presets`): the preset's options
    come first and ``options`` override them. A value of the wrong type or out of range is refused in
    the terms of the command line (the config alone does not know the name it is registered under).
    """
    from bench.tuning.presets import split_preset

    method, preset_options = split_preset(name)
    cls = METHODS.get(method)
    given = options or {}
    try:
        config = cls.config_class.from_dict({**preset_options, **given})
    except OptionValueError as error:
        option = error.bad.option
        default = field_default({f.name: f for f in dataclasses.fields(cls.config_class)}[option])
        origin = f" from the preset {name}" if option in preset_options and option not in given else ""
        message = error.bad.message(name, f"--method-set {name}.{option}", default, "the default", origin)
        raise OptionValueError(message, error.bad) from None
    return cls(config)


# ----------------------------------------------------------------------------- helpers for methods
def freeze_all(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def trainable_by_names(model: nn.Module, names: list[str] | set[str]) -> dict[str, nn.Parameter]:
    """Mark the named parameters trainable and return them (in model order)."""
    wanted = set(names)
    chosen = {n: p for n, p in model.named_parameters() if n in wanted}
    missing = wanted - set(chosen)
    if missing:
        raise BenchError(f"These parameters do not exist in the model: {sorted(missing)[:5]}")
    for parameter in chosen.values():
        parameter.requires_grad_(True)
    return chosen


def trainable_under(model: nn.Module, module: nn.Module) -> dict[str, nn.Parameter]:
    """Mark every parameter of ``module`` (a method's own module installed in a slot) trainable."""
    ids = {id(p) for p in module.parameters()}
    return trainable_by_names(model, {n for n, p in model.named_parameters() if id(p) in ids})
