"""Which modules run in train mode while a method trains: one rule for every method.

Dropout, DropBlock and stochastic depth are regularisers of the weights they sit among. The rule,
the same for every method so that none gets regularisation another does not:

* a module of the detector runs in train mode only when one of its own (the detector's) parameters
  trains, i.e. under full fine-tuning, BitFit, the linear probe or ``sdpt-head``'s head; modules whose
  weights are all frozen run in eval mode, as GLIP does for its frozen stages. A frozen block that a
  method inserts tokens into (VPT's prompts in a Swin block, SDPT's tokens in a fusion layer) is still
  a frozen block: it behaves exactly as it does for a method that leaves it alone;
* parameter-free modules (dropout, stochastic depth, activations) follow the module that holds them;
* a method's own modules (anything under an extension slot or a ``peft`` adapter) run in train mode,
  so a method's own dropout (e.g. LoRA's ``dropout`` option) acts as its config says;
* the detector itself (the root module) is always in train mode: its mode selects losses over
  detections in ``forward``, which is control flow, not regularisation.

``frozen_modules="train"`` in a protocol puts every module in train mode instead (the regularisers
of the whole detector act whatever trains), again for every method alike.
"""

from __future__ import annotations

from torch import nn

from bench.models.base import is_slot_tensor

FROZEN_MODULE_MODES = ("eval", "train")


def set_training_modes(model: nn.Module, frozen_modules: str = "eval") -> None:
    """Put ``model`` in train mode under the rule of the module docstring (``frozen_modules`` "eval")
    or entirely (``"train"``)."""
    if frozen_modules not in FROZEN_MODULE_MODES:
        raise ValueError(f"frozen_modules must be one of {FROZEN_MODULE_MODES}, got {frozen_modules!r}")
    model.train()
    if frozen_modules == "train":
        return

    def visit(prefix: str, module: nn.Module) -> None:
        if prefix and is_slot_tensor(prefix):
            return  # a method's own module: train mode, with everything under it
        own = [(name, p) for name, p in module.named_parameters(prefix=prefix) if not is_slot_tensor(name)]
        if prefix and own and not any(p.requires_grad for _, p in own):
            module.eval()
            for name, child in module.named_modules(prefix=prefix):
                if name != prefix and is_slot_tensor(name):
                    child.train()
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
