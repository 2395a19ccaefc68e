"""Cost of one training step of a tuning method, run in a fresh process so earlier work does not count.

    python tests/benchmarks/method_probe.py MODEL METHOD SIZE

``METHOD`` is a registered method name (used with its default config) or ``frozen``. The model is
randomly initialised (``glip_probe.build``: one SIZE x SIZE image, one three-class prompt, two boxes);
the method is applied, the model is put in training mode and AdamW is built over what the method
returned (one parameter group at the config's ``lr`` and ``weight_decay``; per-group rates such as
``full``'s lower text-encoder rate do not change the cost). Then exactly one step is measured, with
no warm-up (``glip_probe.py`` says why), so the numbers include the one-off costs of a first step:
allocating gradients and AdamW's two moment buffers, and touching fresh memory pages.

What a step is:

* a trained method: forward with targets, sum of the losses, backward, ``optimizer.step()``;
* ``zero-shot`` (nothing trains): the same forward with targets under ``torch.no_grad()``, labelled
  "no-grad fwd" (the forward half of every other row, and the floor under all of them);
* ``frozen``: every parameter frozen, but the backward runs through the *whole* network: the image
  tensor and the text encoder's input embeddings (through its ``input_embedding_hook`` slot)
  require grad, so autograd differentiates the loss down to both inputs, through Swin, the FPN,
  BERT, the fusion tower and the head, computing input gradients only (no weight gradient, no
  optimiser), labelled "fwd+bwd, no update". This is the graph full fine-tuning differentiates,
  minus its weight gradients and AdamW: back-propagation through the frozen detector end to end.
  It is deliberately not cut where SDPT's tokens enter: "SDPT over frozen forward+backward" then
  answers "what does SDPT pay relative to back-propagating through the frozen detector", and since
  SDPT's tokens enter only in the fusion layers, its backward stops there (nothing in Swin or BERT
  needs a gradient), so a ratio below 1 is expected and is SDPT's advantage over prompts at the
  inputs, not a measuring error.

Prints one JSON line: ``seconds`` and ``peak_added_mib`` (peak resident memory over the built model
with the method applied, ``glip_probe.measure``), ``rss_before_mib``, ``mode``, ``trainable`` (the
number of parameters AdamW updates), ``expected_trainable`` (the method's own formula), ``loss`` (the
summed loss of the step) and ``reached_inputs`` (``frozen`` only: whether both inputs got a gradient).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from glip_probe import build, measure  # noqa: E402  (also puts the repository on sys.path)

from bench.tuning.base import build_method, freeze_all  # noqa: E402

FROZEN = "frozen"
NO_GRAD = ("zero-shot",)  # methods with nothing to train: measured as a no-grad forward


class _InputsRequireGrad:
    """An ``input_embedding_hook`` that makes the text input embeddings a leaf requiring grad."""

    def __init__(self) -> None:
        self.embeddings: torch.Tensor | None = None

    def __call__(self, embeddings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.embeddings = embeddings.detach().requires_grad_(True)
        return self.embeddings, mask


def probe(model_name: str, method_name: str, size: int) -> dict:
    model, prompt, images, sizes, targets = build(model_name, size)
    text_inputs = None
    if method_name == FROZEN:
        freeze_all(model)
        images.requires_grad_(True)
        text_inputs = model.text_encoder().input_embedding_hook = _InputsRequireGrad()
        trainable, expected, mode = {}, 0, "fwd+bwd, no update"
    else:
        method = build_method(method_name)
        trainable = method.apply(model)
        expected = method.expected_trainable(model)
        mode = "no-grad fwd" if method_name in NO_GRAD else "train step"
    optimizer = None
    if trainable:
        optimizer = torch.optim.AdamW(trainable.values(), lr=method.config.lr, weight_decay=method.config.weight_decay)
    model.train()
    loss: list[float] = []

    def step() -> None:
        with torch.set_grad_enabled(mode != "no-grad fwd"):
            total = sum(model(images, sizes, prompt, targets).values())
            if mode != "no-grad fwd":
                total.backward()
            if optimizer is not None:
                optimizer.step()
        loss.append(float(total.detach()))

    result = measure(step)
    result.update(method=method_name, mode=mode, loss=loss[0], expected_trainable=expected,
                  trainable=sum(p.numel() for p in trainable.values()))
    if text_inputs is not None:
        result["reached_inputs"] = images.grad is not None and text_inputs.embeddings.grad is not None
    return result


def main() -> None:
    model_name, method_name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(probe(model_name, method_name, size)))


if __name__ == "__main__":
    main()
