"""The frozen-part cache changes how long a cell takes, never what it computes.

Cells of glip-nano are run three times each: without the cache, with an empty disk cache (the
second validation and the test reuse what the first computed), and again with the disk cache the
second run filled (the training batches come from disk too). Scores, the selected step and the
selected tuned weights must be identical, not close. SDPT leaves the image backbone and BERT frozen,
so both are looked up; VPT puts prompts into the Swin blocks, so the image backbone must be computed
every time while BERT is still looked up; CoOp's context vectors sit in BERT's input, so the text
encoder must be computed every time.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bench.models import ModelInputs, build_model
from bench.runs.cell import SELECTED_WEIGHTS, run_cell
from bench.runs.plan import plan_cells
from bench.train.frozen_cache import (
    FrozenWorkCache,
    batch_key,
    install_frozen_cache,
    part_is_frozen,
    part_namespace,
    prune_disk_cache,
)
from bench.tuning.base import build_method, freeze_all
from tests.run_support import quiet_context, synthetic_cache, tiny_request

DATASET = "shapes-colours"
PROTOCOL = {"max_steps": 4, "warmup_steps": 0, "eval_every": 2, "batch_size": 2, "checkpoint_every": 4}


def run_three_ways(tmp_path_factory, method: str) -> dict[str, tuple]:
    """``{mode: (record, selected weights)}`` for the cache off, cold and warm."""
    data = synthetic_cache(tmp_path_factory, [DATASET])
    results = tmp_path_factory.mktemp(f"frozen-{method}")
    outcomes = {}
    for mode, frozen_cache in (("off", "off"), ("cold", "disk"), ("warm", "disk")):
        context = quiet_context(results, data, frozen_cache=frozen_cache)
        [cell] = plan_cells(tiny_request([method], [DATASET], protocol_overrides=PROTOCOL), context)
        record = run_cell(cell, context)
        outcomes[mode] = (record, load_file(context.store.work_dir(cell.key) / SELECTED_WEIGHTS))
    return outcomes


@pytest.fixture(scope="module")
def sdpt_runs(tmp_path_factory):
    return run_three_ways(tmp_path_factory, "sdpt")


@pytest.fixture(scope="module")
def vpt_runs(tmp_path_factory):
    return run_three_ways(tmp_path_factory, "vpt")


@pytest.fixture(scope="module")
def coop_runs(tmp_path_factory):
    return run_three_ways(tmp_path_factory, "coop")


def assert_same_outcome(runs: dict[str, tuple]) -> None:
    reference, weights = runs["off"]
    for mode in ("cold", "warm"):
        record, tensors = runs[mode]
        assert record.val == reference.val and record.test == reference.test, mode
        assert record.best_step == reference.best_step, mode
        assert tensors.keys() == weights.keys()
        for name in weights:
            assert torch.equal(tensors[name], weights[name]), (mode, name)


@pytest.mark.parametrize("runs", ["sdpt_runs", "vpt_runs", "coop_runs"])
def test_results_are_identical_with_the_cache_off_cold_and_warm(runs, request):
    assert_same_outcome(request.getfixturevalue(runs))


def test_sdpt_looks_up_both_frozen_parts_and_a_warm_cache_computes_nothing(sdpt_runs):
    off, cold, warm = (sdpt_runs[m][0].provenance["frozen_cache"] for m in ("off", "cold", "warm"))
    assert off == {"mode": "off"}
    # 4 training steps + 2 validations + 1 test, each evaluation pass of the whole vocabulary;
    # the second validation repeats the first one's batches, so a cold cache already hits memory.
    assert cold["computed"] > 0 and cold["memory_hits"] > 0 and cold["bypassed"] == 0
    assert warm["computed"] == 0 and warm["bypassed"] == 0
    assert warm["disk_hits"] == cold["computed"]


def test_vpt_computes_the_prompted_image_backbone_every_time(vpt_runs):
    cold, warm = (vpt_runs[m][0].provenance["frozen_cache"] for m in ("cold", "warm"))
    # every image-backbone call is bypassed (its Swin blocks hold VPT's prompts); the text is looked up
    assert cold["bypassed"] > 0 and warm["bypassed"] == cold["bypassed"]
    assert warm["computed"] == 0 and warm["disk_hits"] > 0


def test_coop_computes_the_text_encoder_every_time(coop_runs, sdpt_runs):
    coop, sdpt = coop_runs["warm"][0].provenance["frozen_cache"], sdpt_runs["warm"][0].provenance["frozen_cache"]
    assert coop["bypassed"] > 0 and coop["computed"] == 0
    # what coop does not look up (the text) is what sdpt looks up on top of the image features
    assert coop["disk_hits"] + coop["memory_hits"] + coop["bypassed"] == sdpt["disk_hits"] + sdpt["memory_hits"]


# ----------------------------------------------------------------- the rule, the keys, the disk cap
@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return build_model("glip-nano", ModelInputs(None, None))


def test_a_part_is_frozen_only_without_gradients_train_mode_or_filled_slots(nano):
    model = nano
    freeze_all(model)
    model.eval()
    trunk = model.frozen_parts()["image"]
    assert part_is_frozen(trunk)
    trunk.body.patch_embed.train()
    assert not part_is_frozen(trunk)
    trunk.eval()
    next(trunk.parameters()).requires_grad_(True)
    assert not part_is_frozen(trunk)
    next(trunk.parameters()).requires_grad_(False)
    block = model.vision_blocks()[0].module
    block.extra_tokens = nn.Identity().eval()
    assert not part_is_frozen(trunk)
    block.extra_tokens = None
    assert part_is_frozen(trunk)


def test_an_input_that_requires_grad_is_never_looked_up(nano):
    model = nano
    freeze_all(model)
    model.eval()
    cache = install_frozen_cache(model, "memory", None)
    images = torch.randn(1, 3, 64, 64)
    model.frozen_output("image", model.backbone, images)
    model.frozen_output("image", model.backbone, images)
    model.frozen_output("image", model.backbone, images.clone().requires_grad_(True))
    assert dataclasses.astuple(cache.counters) == (1, 1, 0, 1)
    model.frozen_work = None


def test_keys_tell_apart_bytes_dtypes_shapes_and_autocast():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    keys = {
        batch_key("image", [x]),
        batch_key("text", [x]),
        batch_key("image", [x.reshape(4, 3)]),
        batch_key("image", [x.to(torch.float64)]),
        batch_key("image", [x + torch.finfo(torch.float32).eps * (x == 1)]),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys.add(batch_key("image", [x]))
    assert len(keys) == 6
    assert batch_key("image", [x]) == batch_key("image", [x.clone()])
    assert batch_key("image", [x.t().contiguous().t()]) == batch_key("image", [x])  # layout is not content


def test_the_disk_namespace_follows_the_weights():
    layer = nn.Linear(3, 2)
    before = part_namespace(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1
    assert part_namespace(layer) != before


def test_a_hit_returns_a_copy_that_callers_may_change():
    layer = nn.Linear(4, 4).eval().requires_grad_(False)
    cache = FrozenWorkCache({"part": layer})
    x = torch.randn(2, 4)
    first = cache.output("part", layer, [x])
    first.zero_()
    again = cache.output("part", layer, [x])
    assert torch.equal(again, layer(x))


def test_an_over_full_disk_cache_loses_its_oldest_entries(tmp_path):
    import os

    for i in range(10):
        path = tmp_path / "ns" / "image" / f"{i}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    left = prune_disk_cache(tmp_path, cap=500)
    kept = sorted(int(p.stem) for p in (tmp_path / "ns" / "image").iterdir())
    assert kept == [6, 7, 8, 9]  # pruned down to 80% of the cap, oldest first
    assert left == 100
    assert prune_disk_cache(tmp_path / "missing", cap=500) == 500
