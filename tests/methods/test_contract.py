"""The contract every registered method keeps, on every backend (DESIGN.md, "The method contract").

Each test runs on the small GLIP and on a tiny Grounding DINO (the ``backend`` fixture)."""

from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from bench.tuning.accounting import account
from bench.models.base import SLOT_NAMES
from bench.tuning.base import METHODS, build_method
from bench.tuning.state import load_tuned, save_tuned
from methods.composition import filled_slots
from tests.training_support import train_steps as run_steps

# Compositions made on demand (methods.composition), beside the registered ones.
COMPOSED = ["sdpt+bitfit", "coop+vpt", "sdpt+ia3"]
ALL_METHODS = METHODS.names() + [name for name in COMPOSED if name not in METHODS.names()]
TRAINING_METHODS = [name for name in ALL_METHODS if name != "zero-shot"]


def train_steps(model, trainable, task, steps: int, lr: float) -> list[float]:
    return run_steps(model, trainable, task.images, task.sizes, task.prompt, task.targets, steps=steps, lr=lr)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_only_declared_parameters_train_and_the_count_matches_the_formula(name, backend):
    model = backend.build()
    method = build_method(name)
    trainable = method.apply(model)
    requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requires_grad == set(trainable)
    assert sum(p.numel() for p in trainable.values()) == method.expected_trainable(model)
    report = account(model, method, trainable)
    assert report.allocated == method.expected_trainable(model)
    assert 0 <= report.effective <= report.allocated and report.head <= report.allocated


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_frozen_tensors_stay_bit_identical_while_training(name, backend):
    model = backend.build()
    method = build_method(name)
    trainable = method.apply(model)
    trained = {id(p) for p in trainable.values()}  # by identity: tied weights appear under several keys
    before = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in trained}
    train_steps(model, trainable, backend.task, steps=3, lr=1e-2)
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert any(not torch.equal(p, backend.build().state_dict().get(n, torch.empty(0))) for n, p in trainable.items())


@pytest.mark.parametrize("name", ALL_METHODS)
def test_the_declared_slots_are_the_slots_install_fills(name, backend):
    model = backend.build()
    empty = {slot for _, slot in filled_slots(model)}
    method = build_method(name)
    method.apply(model)
    assert {slot for _, slot in filled_slots(model) if slot in SLOT_NAMES} - empty == set(method.slots)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_identity_at_init_is_declared_truthfully(name, backend):
    base = backend.outputs(backend.build(), backend.task)
    model = backend.build()
    method = build_method(name)
    method.apply(model)
    tuned = backend.outputs(model, backend.task)
    identical = all(torch.equal(a, b) for a, b in zip(base, tuned))
    assert identical == method.identity_at_init


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_saved_state_restores_the_tuned_model_on_a_fresh_base(name, backend, tmp_path):
    model = backend.build()
    method = build_method(name)
    trainable = method.apply(model)
    train_steps(model, trainable, backend.task, steps=2, lr=1e-2)
    path = save_tuned(tmp_path / f"{name}.safetensors", model, method, trainable)
    restored = backend.build()
    loaded_method, _ = load_tuned(path, restored)
    assert loaded_method.config == method.config
    for a, b in zip(backend.outputs(model, backend.task), backend.outputs(restored, backend.task)):
        assert torch.equal(a, b)
    if name not in ("full", "bitfit"):  # those store (nearly) the whole model by design
        assert path.stat().st_size < 0.5 * sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("name", TRAINING_METHODS)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_training_works_for_batch_sizes_and_lowers_the_loss(name, batch_size, backend, request):
    if (backend.name, name, batch_size) == ("grounding-dino", "sdpt+lora", 1):
        # not strict: whether the first update diverges depends on the CPU's BLAS kernels (it does on some
        # machines' OpenBLAS core types, not on others), so a pass is no news either
        request.applymarker(pytest.mark.xfail(strict=False, reason=(
            "the tiny Grounding DINO's fusion attention is as wide as its inputs (32), so its random square "
            "projections are nearly singular (second layer's image projection: smallest singular value 3.3e-4 of "
            "1.8): SDPT's pseudo-inverse magnifies its tokens up to ~5000x, and LoRA's first update on those prompts "
            "diverges (released models are 4x wider than their inputs); sdpt and lora each pass alone")))
    torch.manual_seed(0)  # methods draw their initial values from the global generator
    model = backend.build()
    method = build_method(name)
    trainable = method.apply(model)
    steps = 20 if batch_size == 1 else 2
    losses = train_steps(model, trainable, backend.task.batch(batch_size), steps=steps, lr=method.config.lr or 1e-3)
    assert all(torch.isfinite(torch.tensor(losses)))
    if batch_size == 1:
        assert backend.loss_falls(losses), losses


def test_unknown_method_and_unknown_option_are_explained():
    from bench.errors import BenchError, UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'bitfit'"):
        build_method("bitfti")
    with pytest.raises(BenchError, match=r"Unknown option\(s\) \['rank'\] for FullConfig; valid options: lr"):
        build_method("full", {"rank": 4})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_config_round_trips_through_json(name):
    import json

    method = build_method(name)
    again = type(method.config).from_dict(json.loads(method.config.to_json()))
    assert again == method.config
