"""Parameter accounting, the same for every method and model.

* ``allocated``: parameters with ``requires_grad`` after ``apply``;
* ``effective``: the degrees of freedom of the trained tensors that can act on the outputs
  (``Method.effective_trainable``): the dimension of the set of functions the trainable tensors can
  reach locally, i.e. the generic rank of the Jacobian of the outputs with respect to the trainable
  tensors (at a generic point of the tensors and over generic images), bounded by what the model can
  see. Each method states its count with a one-line reason; the rules they share:

  - rows or positions the model never reads count nothing: of GLIP's 1000-row prompt-tuning matrix
    only the rows of the text positions the captions use act (``text_positions``; padded positions
    are masked, rows past the text slots never added);
  - a tensor that acts only through a map counts the rank of that map: SDPT's tokens act through
    pseudo-inverses of width ``v_dim`` (and ``l_dim`` when its text prompts are visible), not ``E``;
  - a product of trained factors counts the dimension of the products: LoRA's ``B A`` has
    ``r (in + out) - r^2`` (any invertible ``G`` gives ``(G A, B G^-1)`` the same product), IA3's
    query and key scales meet in one product per channel;
  - a vector that reaches the model only through a LayerNorm loses :data:`LAYER_NORM_INVARIANCES`
    directions: LayerNorm ignores a shift along the ones vector, and a positive scaling up to its
    ``eps`` (1e-5 in Swin, 1e-12 in BERT), whose effect is of order ``eps / variance`` of the input;
  - methods that train the detector's own weights (``full``, ``bitfit``, ``linear-probe``, the head of
    ``sdpt-head``) report their allocation, an upper bound: the frozen architecture's own symmetries
    (softmax's indifference to key biases, ReLU rescaling, a LayerNorm's affine absorbed by the next
    Linear, attention's per-head query-key gauge) are not visible through the extension points.

  ``tests/methods/test_effective_counts.py`` checks each count against Jacobian ranks on the tiny models;
* ``head``: allocated parameters in the detector's ``head`` group (trained prediction layers);
* ``stored_bytes``: bytes of the trained tensors as saved (float32 unless the model is otherwise);
* ``percent_of_base``: ``allocated`` over the base model's own parameters, in percent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from bench.models.base import DetectorBase
from bench.tuning.base import Method

# Directions of a vector that a LayerNorm reading it ignores: a shift along the ones vector, and a
# positive scaling (exactly up to the norm's eps; see the module docstring).
LAYER_NORM_INVARIANCES = 2


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


def account(model: DetectorBase, method: Method, trainable: dict[str, nn.Parameter],
            text_positions: int | None = None) -> ParameterAccount:
    """Account for ``method`` after it was applied to ``model`` (``trainable`` is what ``apply`` returned).

    ``text_positions``: the longest caption's token count (see ``Method.effective_trainable``); None
    counts every text slot, as for a model accounted without data.
    """
    base_names = set(model.base_parameter_names())
    base = sum(p.numel() for n, p in model.named_parameters() if n in base_names)
    head_names = set(model.parameter_groups()["head"])
    return ParameterAccount(
        method=method.name,
        base=base,
        allocated=sum(p.numel() for p in trainable.values()),
        effective=method.effective_trainable(model, text_positions),
        head=sum(p.numel() for n, p in trainable.items() if n in head_names),
        stored_bytes=sum(p.numel() * p.element_size() for p in trainable.values()),
    )
