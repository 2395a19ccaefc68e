"""One regularisation rule for every method (bench/train/modes.py): frozen detector modules run in eval
mode whatever a method inserts into them; modules whose own weights train, and a method's own modules,
run in train mode."""

from __future__ import annotations

import pytest
from torch import nn

from bench.models.base import is_slot_tensor
from bench.train.modes import set_training_modes
from bench.tuning.base import build_method


def _modes_after(method: str, build, frozen_modules: str = "eval", **options) -> nn.Module:
    model = build()
    build_method(method, options).apply(model)
    set_training_modes(model, frozen_modules)
    return model


def _regularisers(module: nn.Module) -> list[bool]:
    """The training flag of every parameter-free module (dropout, stochastic depth) under ``module``."""
    return [m.training for m in module.modules() if not list(m.parameters(recurse=False)) and not list(m.children())]


@pytest.mark.parametrize("methods", [("vpt", "maple", "zero-shot", "sdpt"), ("sdpt", "lora", "coop", "zero-shot")])
def test_methods_touching_the_same_frozen_blocks_see_the_same_modes(backend, methods):
    """VPT and MaPLe insert prompts into the first vision block, SDPT tokens into every fusion layer,
    LoRA wraps the fusion projections: the blocks stay in eval mode for all of them, as for zero-shot."""
    for method in methods:
        model = _modes_after(method, backend.build)
        block = model.vision_blocks()[0].module
        fusion = model.fusion_layers()[0]
        assert model.training, method  # the detector's own mode selects losses in forward
        assert not block.training and not any(_regularisers(block)), method
        assert not fusion.training and not any(
            m.training for name, m in fusion.named_modules() if not is_slot_tensor(name)
        ), method


def test_a_method_s_own_modules_train(glip_a_factory):
    model = _modes_after("lora", glip_a_factory, dropout=0.1)
    adapters = [m for name, m in model.named_modules() if "peft_method" in name.split(".")]
    assert adapters and all(m.training for m in adapters)
    dropouts = [m for name, m in model.named_modules() if name.endswith("lora_dropout.peft_method")]
    assert dropouts and all(isinstance(m, nn.Dropout) and m.training for m in dropouts)


def test_modules_whose_weights_train_run_in_train_mode(glip_a_factory):
    model = _modes_after("full", glip_a_factory)
    assert model.fusion_layers()[0].training
    assert model.vision_blocks()[-1].module.training
    assert not model.vision_blocks()[0].module.training  # GLIP's recipe freezes the first stage


def test_protocol_can_put_every_module_in_train_mode(glip_a_factory):
    model = _modes_after("vpt", glip_a_factory, frozen_modules="train")
    assert all(m.training for m in model.modules())


def test_a_method_that_only_inserts_modules_still_gets_losses(backend):
    model = _modes_after("sdpt", backend.build, num_tokens=2)
    task = backend.task
    losses = model(task.images, task.sizes, task.prompt, task.targets)
    assert losses and all(value.requires_grad for value in losses.values())
