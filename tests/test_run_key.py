"""Run keys: the same run gets the same key in every process; anything that changes the run changes it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import bench.runs.record as record_module
from bench.catalog import Catalog
from bench.data.holdout import HELD_OUT
from bench.errors import BenchError
from bench.models.glip.model import NANO_WEIGHTS
from bench.runs.fingerprint import FingerprintCache, dataset_fingerprint, weights_fingerprint
from bench.runs.plan import plan_cells
from bench.runs.record import RunSpec
from bench.train.protocol import PROTOCOLS
from bench.tuning.base import METHODS
from tests.run_support import quiet_context, synthetic_cache, tiny_request

REPO = Path(__file__).resolve().parents[1]
SPEC = dict(model="glip-nano", method="sdpt", dataset="shapes-colours", weights=None,
            method_options={"num_tokens": 4, "layers": [0, 1]}, shots=3, split_seed=0, train_seed=0,
            protocol="shapes", protocol_overrides={"max_steps": 4, "milestones": [0.5]})
WEIGHTS_DIGEST, DATA_DIGEST = "w" * 20, "d" * 20
SETTINGS = {"method_config": {"lr": 0.01}, "protocol": {"batch_size": 2}}
# A different value for every field of RunSpec (a new field must be added here, so that it is keyed).
CHANGED = dict(model="glip-t", method="lora", dataset="shapes-dense", method_options={"num_tokens": 8, "layers": [0, 1]},
               shots=5, split_seed=1, train_seed=1, protocol="glip-odinw", protocol_overrides={"max_steps": 5, "milestones": [0.5]},
               tuning={"stage": "trial", "values": {"lr": 0.01}}, validation=HELD_OUT)

KEY_IN_A_FRESH_PROCESS = """
import json, sys
from bench.runs.record import RunSpec
spec = RunSpec(**json.loads(sys.argv[1]))
print(spec.key(sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
"""


def key_of(**changes) -> str:
    return RunSpec(**(SPEC | changes)).key(WEIGHTS_DIGEST, DATA_DIGEST, SETTINGS)


def test_the_key_is_the_same_in_another_process():
    ours = key_of()
    env = os.environ | {"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}  # another str hash seed too
    theirs = subprocess.run([sys.executable, "-c", KEY_IN_A_FRESH_PROCESS, json.dumps(SPEC), WEIGHTS_DIGEST, DATA_DIGEST, json.dumps(SETTINGS)],
                            cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert theirs == ours
    assert len(ours) == 20 and int(ours, 16) >= 0


def test_two_constructions_of_one_run_agree():
    reordered = dict(reversed(list(SPEC["method_options"].items())))
    assert key_of(method_options=reordered) == key_of()
    assert key_of(method_options={"num_tokens": 4, "layers": (0, 1)}) == key_of()  # JSON has no tuples
    assert key_of(protocol_overrides={"milestones": (0.5,), "max_steps": 4}) == key_of()


def test_every_spec_field_but_the_weights_path_is_part_of_the_key():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(RunSpec)} - {"weights"}
    keys = {name: key_of(**{name: value}) for name, value in CHANGED.items()}
    assert key_of() not in keys.values()
    assert len(set(keys.values())) == len(keys)


def test_the_weights_path_does_not_change_the_key_but_the_weights_content_does():
    assert key_of(weights="/models/a/glip.pth") == key_of(weights="/elsewhere/glip.pth") == key_of()
    spec = RunSpec(**SPEC)
    assert spec.key("v" * 20, DATA_DIGEST, SETTINGS) != spec.key(WEIGHTS_DIGEST, DATA_DIGEST, SETTINGS)
    assert spec.key(None, DATA_DIGEST, SETTINGS) != spec.key(WEIGHTS_DIGEST, DATA_DIGEST, SETTINGS)


def test_the_data_fingerprint_and_results_version_are_part_of_the_key(monkeypatch):
    spec, current = RunSpec(**SPEC), key_of()
    assert spec.key(WEIGHTS_DIGEST, "e" * 20, SETTINGS) != current
    monkeypatch.setattr(record_module, "RESULTS_VERSION", record_module.RESULTS_VERSION + 1)
    assert spec.key(WEIGHTS_DIGEST, DATA_DIGEST, SETTINGS) != current


def test_the_resolved_settings_are_part_of_the_key():
    spec = RunSpec(**SPEC)
    assert spec.key(WEIGHTS_DIGEST, DATA_DIGEST, SETTINGS | {"protocol": {"batch_size": 4}}) != key_of()


def test_a_changed_default_makes_new_keys_without_a_version_bump(tmp_path_factory, monkeypatch):
    """A method's default lr and a protocol's default field change what a run computes: the planned
    keys change with them, while a field that changes no number (activation checkpointing) keeps them."""
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    context = quiet_context(tmp_path_factory.mktemp("results"), cache)
    request = tiny_request(["bitfit"], ["shapes-colours"])

    def keys() -> list[str]:
        return [cell.key for cell in plan_cells(request, context)]

    before = keys()
    bitfit = METHODS.get("bitfit")
    faster = dataclasses.make_dataclass("FasterBitFitConfig", [("lr", float, dataclasses.field(default=bitfit.config_class().lr * 2))],
                                        bases=(bitfit.config_class,), frozen=True,
                                        namespace={"sources": {"lr": "ours: a test's changed default"}})
    with monkeypatch.context() as patch:
        patch.setattr(bitfit, "config_class", faster)
        changed_method = keys()
    protocol = PROTOCOLS.get(request.protocol)
    with monkeypatch.context() as patch:
        patch.setitem(PROTOCOLS._entries, request.protocol,
                      dataclasses.replace(PROTOCOLS.entry(request.protocol), obj=dataclasses.replace(protocol, gamma=protocol.gamma / 2)))
        changed_protocol = keys()
    with monkeypatch.context() as patch:
        other = "all" if protocol.activation_checkpointing != "all" else "off"
        patch.setitem(PROTOCOLS._entries, request.protocol, dataclasses.replace(
            PROTOCOLS.entry(request.protocol), obj=dataclasses.replace(protocol, activation_checkpointing=other)))
        unchanged = keys()
    assert len({*before, *changed_method, *changed_protocol}) == 3 * len(before)
    assert unchanged == before and keys() == before


def test_spec_round_trips_and_rejects_unknown_fields():
    spec = RunSpec(**SPEC)
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BenchError, match="Unknown run-spec field"):
        RunSpec.from_dict(spec.to_dict() | {"sheep": 1})


def test_method_label_names_the_non_default_options():
    assert RunSpec(**SPEC).method_label == "sdpt[layers=0+1,num_tokens=4]"
    assert RunSpec(**(SPEC | {"method_options": {}})).method_label == "sdpt"


# ------------------------------------------------------------------------ fingerprints in planning
def test_planned_keys_follow_the_weights_content_not_their_path(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory, ["shapes-colours"])
    root = tmp_path_factory.mktemp("weights")
    (root / "a").mkdir()
    shutil.copy(NANO_WEIGHTS, root / "a" / "nano.safetensors")
    (root / "b").mkdir()
    shutil.copy(NANO_WEIGHTS, root / "b" / "nano.safetensors")
    tensors = load_file(NANO_WEIGHTS)
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name] + 1}, root / "c.safetensors")  # same architecture, other values
    context = quiet_context(root / "results", cache)

    def keys(weights, random_init=False):
        request = tiny_request(["zero-shot", "bitfit"], ["shapes-colours"], weights=weights, random_init=random_init)
        return [c.key for c in plan_cells(request, context)]

    a, b = keys(str(root / "a" / "nano.safetensors")), keys(str(root / "b" / "nano.safetensors"))
    c, none = keys(str(root / "c.safetensors")), keys(None, random_init=True)
    assert a == b
    assert len({*a, *c, *none}) == 6


def test_dataset_fingerprint_follows_the_annotation_content_and_the_catalog_entry(tmp_path):
    spec = Catalog.load().dataset("shapes-colours")
    files = {}
    for split in ("train", "val", "test"):
        files[split] = tmp_path / f"{split}.json"
        files[split].write_text(f'{{"split": "{split}"}}')
    cache = FingerprintCache(tmp_path / "fingerprints.json")
    first = dataset_fingerprint(spec, files, cache)

    os.utime(files["val"], (1, 1))  # touched, same content: the same fingerprint (digested again)
    assert dataset_fingerprint(spec, files, cache) == first
    assert dataset_fingerprint(dataclasses.replace(spec, source=Path("/elsewhere.yaml")), files, cache) == first
    assert dataset_fingerprint(dataclasses.replace(spec, version=2), files, cache) != first
    files["val"].write_text('{"split": "val", "edited": true}')
    assert dataset_fingerprint(spec, files, cache) != first


def test_fingerprint_cache_is_kept_between_processes(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x" * 1000)
    cache = FingerprintCache(tmp_path / "fingerprints.json")
    digest = weights_fingerprint(str(path), cache)
    cache.save()
    assert (tmp_path / "fingerprints.json").is_file()

    reloaded = FingerprintCache(tmp_path / "fingerprints.json")
    reloaded._load()
    [(entry, full)] = reloaded._digests.items()
    assert entry.startswith(f"{path.resolve()}|1000|") and full.startswith(digest)
    assert weights_fingerprint(str(path), reloaded) == digest and not reloaded._dirty  # read, not hashed again
    assert weights_fingerprint(None, reloaded) is None


def test_a_method_field_added_after_results_existed_is_keyed_only_when_set():
    """SDPT's pinv_from came after the default benchmark's records: at its default it keys nothing."""
    from bench.runs.resolved import keyed_settings
    from bench.tuning.base import build_method

    for name, field in (("sdpt", "pinv_from"), ("sdpt+lora", "sdpt_pinv_from")):
        config = build_method(name).config
        settings = {"method_config": config.to_dict(), "protocol": {}}
        assert field not in keyed_settings(settings, config.keyed_when_set)["method_config"]
        settings["method_config"][field] = "tuned"
        assert keyed_settings(settings, config.keyed_when_set)["method_config"][field] == "tuned"
