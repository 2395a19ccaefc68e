"""Parameter accounting, the same for every method and model.

* ``allocated``: parameters with ``requires_grad`` after ``apply``;
* ``effective``: the allocated ones that can influence the output (the method's own count: e.g. GLIP's
  prompt-tuning matrix has 1000 rows of which only the text slots are ever added);
* ``head``: allocated parameters in the detector's ``head`` group (trained prediction layers);
* ``stored_bytes``: bytes of the trained tensors as saved (float32 unless the model is otherwise);
* ``percent_of_base``: ``allocated`` over the base model's own parameters, in percent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from bench.models.base import DetectorBase
from bench.tuning.base import Method


@dataclass(frozen=True)
class ParameterAccount:
    method: str
    base: int
    allocated: int
    effective: int
    head: int
    stored_bytes: int

    @property
    def percent_of_base(self) -> float:
        return 100.0 * self.allocated / self.base

    def to_dict(self) -> dict:
        return {**asdict(self), "percent_of_base": self.percent_of_base}


def account(model: DetectorBase, method: Method, trainable: dict[str, nn.Parameter]) -> ParameterAccount:
    """Account for ``method`` after it was applied to ``model`` (``trainable`` is what ``apply`` returned)."""
    base_names = set(model.base_parameter_names())
    base = sum(p.numel() for n, p in model.named_parameters() if n in base_names)
    head_names = set(model.parameter_groups()["head"])
    return ParameterAccount(
        method=method.name,
        base=base,
        allocated=sum(p.numel() for p in trainable.values()),
        effective=method.effective_trainable(model),
        head=sum(p.numel() for n, p in trainable.items() if n in head_names),
        stored_bytes=sum(p.numel() * p.element_size() for p in trainable.values()),
    )
