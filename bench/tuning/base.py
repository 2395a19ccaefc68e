"""What a tuning method is: a frozen config dataclass plus ``apply(model)``.

``apply`` freezes what the method does not train, installs the method's modules into the model's
declared extension points (:mod:`bench.models.base`), and returns the trainable parameters by their
names in ``model.named_parameters()``. Methods never look at a model's class or name, so every method
runs on every backend that provides the extension points.

Each method module registers itself at its end with :func:`register_method`; the harness and
``--list`` read :data:`METHODS`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, ClassVar, TypeVar

from torch import nn

from bench.errors import BenchError
from bench.models.base import DetectorBase
from bench.registry import Registry


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's configuration: JSON round trip and strict field checking.

    ``lr`` and ``weight_decay`` are the method's optimiser settings (each subclass documents where
    its defaults come from: the paper, the official code, or ours).
    """

    lr: float = 1e-4
    weight_decay: float = 0.05

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
                + ", ".join(f"{name} (default {_default(f)!r})" for name, f in valid.items())
                + "."
            )
        for name, value in values.items():
            if isinstance(value, list):  # JSON has no tuples
                values[name] = tuple(value)
        return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


class Method:
    """A tuning method bound to its configuration.

    Subclasses set ``config_class`` and implement :meth:`install` and :meth:`expected_trainable`.
    ``identity_at_init`` declares that the tuned model computes exactly what the base model computes
    until the first optimiser step (zero-initialised offsets, LoRA with B = 0); contract tests check
    the declaration both ways.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    identity_at_init: ClassVar[bool] = False

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

    def effective_trainable(self, model: DetectorBase) -> int:
        """Trainable parameters that can influence the output (allocated ones minus dead rows or masked tokens)."""
        return self.expected_trainable(model)


METHODS: Registry[type[Method]] = Registry("method")

M = TypeVar("M", bound=type[Method])


def register_method(name: str, config_class: type[MethodConfig], description: str) -> Callable[[M], M]:
    """Class decorator: give a method its name and config class and add it to :data:`METHODS`."""

    def decorate(cls: M) -> M:
        cls.name, cls.config_class, cls.description = name, config_class, description
        METHODS.add(name, cls, description)
        return cls

    return decorate


def build_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """A registered method with its config built from ``options`` (unknown names and fields are errors)."""
    import methods  # noqa: F401  (registers every method module)

    cls = METHODS.get(name)
    return cls(cls.config_class.from_dict(options))


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
