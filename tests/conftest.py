"""Shared test set-up: offline hubs, small fixtures, and the SLURM availability check."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bench.models.glip.checkpoint import load_official_checkpoint  # noqa: E402
from bench.models.glip.config import from_reduced_config  # noqa: E402
from bench.models.glip.language import load_tokenizer  # noqa: E402
from bench.models.glip.model import GLIP  # noqa: E402
from bench.models.grounding_dino.model import grounding_dino_on_config  # noqa: E402
from tests.grounding_dino_support import TINY_INPUTS, tiny_config, tiny_tokenizer, warmed_up_weights  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_a_dir() -> Path:
    """Parity fixture A, made by running the official GLIP code (see tests/fixtures/README.md)."""
    return FIXTURES / "glip_parity_A"


@pytest.fixture(scope="session")
def fixture_a_summary(fixture_a_dir) -> dict:
    return json.loads((fixture_a_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def fixture_a_reference(fixture_a_dir) -> dict:
    """The official code's tensors for fixture A (``reference.pt``), loaded without running pickled code."""
    return torch.load(fixture_a_dir / "reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def glip_a_factory(fixture_a_dir):
    """Builds a fresh copy of the fixture-A GLIP (its official-code weights) on each call."""
    config = from_reduced_config(fixture_a_dir / "reduced_config.json", fixture_a_dir / "bert_local" / "config.json")
    tokenizer = load_tokenizer(fixture_a_dir / "bert_local")
    state = GLIP(config, tokenizer)
    load_official_checkpoint(state, fixture_a_dir / "glip_reduced_A.pth")
    weights = state.state_dict()

    def build() -> GLIP:
        model = GLIP(config, tokenizer)
        model.load_state_dict(weights)
        return model.eval()

    return build


@pytest.fixture(scope="session")
def grounding_dino_factory(tmp_path_factory):
    """Builds a fresh copy of one tiny, warmed-up Grounding DINO (the same weights on each call)."""
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("grounding_dino_tokenizer"))
    config = tiny_config(len(tokenizer))
    weights = warmed_up_weights(tokenizer)

    def build():
        model = grounding_dino_on_config(copy.deepcopy(config), tokenizer, TINY_INPUTS)  # a config of its own
        model.load_state_dict(weights)
        return model.eval()

    return build


CATALOGUE_PREFIX = "peft:"  # the methods of methods.peft_tuners' catalogue
COMPOSED_ON_DEMAND = {"sdpt+bitfit", "coop+vpt", "sdpt+ia3"}  # tests/methods/test_contract.py's extra compositions


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test parametrised with a method of the peft catalogue (20 tuners: their contract on two
    backends alone is 300 tests, about 3 minutes on two idle cores) or with one of the compositions the
    contract runs on demand is marked ``extended``: ``make test`` leaves them to ``make test-soak``,
    which CI runs after it, so the everyday suite stays within its time budget while CI still runs all
    of them (the registered compositions, sdpt+lora and dual-prompt, stay in make test)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(value, str) and (value.startswith(CATALOGUE_PREFIX) or value in COMPOSED_ON_DEMAND)
               for value in params.values()):
            item.add_marker(pytest.mark.extended)
