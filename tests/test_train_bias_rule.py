"""GLIP's bias rule in the AdamW groups: every trained tensor whose name contains ``bias`` (not only
``*.bias``) gets the bias lr factor and no weight decay, as in microsoft/GLIP
``maskrcnn_benchmark/solver/build.py``. These tests list, per backend and method, which trained names
the substring matches beyond ``*.bias``, so a method tensor that lands in the bias group by the
accident of its name fails here."""

from __future__ import annotations

import pytest

import methods  # noqa: F401  (registers every method)
from bench.models import MODELS
from bench.models.grounding_dino.model import grounding_dino_on_config
from bench.train.optim import is_bias, parameter_groups
from bench.train.protocol import Protocol
from bench.tuning.base import METHODS, build_method
from tests.grounding_dino_support import TINY_INPUTS, tiny_config, tiny_tokenizer
from tests.run_support import MODEL

# The last name component of every trained tensor that GLIP's rule treats as a bias although its name
# does not end in "bias", for each method with its default config (methods not listed: none).
NOT_SUFFIX_MATCHES = {
    "glip": {
        "full": {"relative_position_bias_table", "bias_lang", "bias0"},
        "linear-probe": {"bias_lang", "bias0"},
        "sdpt-head": {"bias_lang", "bias0"},
        "peft:beft": {"peft_method"},
    },
    "grounding-dino": {
        "full": {"relative_position_bias_table"},
        "peft:beft": {"peft_method"},
    },
    "mm-grounding-dino": {
        "full": {"relative_position_bias_table"},
        "peft:beft": {"peft_method"},
    },
}
# Methods whose own (added) tensors include biases: MaPLe's couplings and the adapters' bottlenecks are
# nn.Linear layers, LN tuning trains copies of LayerNorms, BEFT's tensor is an output offset (under
# ``...beft_bias.peft_method``): GLIP's rule gives all of them the bias lr and no weight decay.
METHODS_WITH_OWN_BIASES = {"maple", "adapter", "peft:ln-tuning", "peft:beft"}
OWN_BIAS_NAMES = {"peft:beft": "peft_method"}  # a method's own bias tensor not named *.bias


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    """Fresh detectors of both backends: glip-nano and tiny, untrained Grounding DINOs (names only matter)."""
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("bias_rule_tokenizer"))

    def grounding_dino(family: str):
        return lambda: grounding_dino_on_config(tiny_config(len(tokenizer), family), tokenizer, TINY_INPUTS)

    return {"glip": lambda: MODELS.get(MODEL)(), "grounding-dino": grounding_dino("grounding-dino"),
            "mm-grounding-dino": grounding_dino("mm-grounding-dino")}


@pytest.mark.parametrize("backend", sorted(NOT_SUFFIX_MATCHES))
@pytest.mark.parametrize("name", METHODS.names())
def test_the_substring_rule_matches_only_intended_names(name, backend, builders):
    model = builders[backend]()
    trainable = build_method(name).apply(model)
    base = set(model.base_parameter_names())
    beyond_suffix = {n.rsplit(".", 1)[-1] for n in trainable if is_bias(n) and not n.endswith("bias")}
    assert beyond_suffix == NOT_SUFFIX_MATCHES[backend].get(name, set())
    own = [n for n in trainable if n not in base and is_bias(n)]
    assert all(n.endswith(".bias") or n.endswith(OWN_BIAS_NAMES.get(name, ".bias")) for n in own), own
    assert bool(own) == (name in METHODS_WITH_OWN_BIASES)


def test_the_linear_probe_trains_glip_bias_lang_and_bias0_as_biases():
    """GLIP's linear probe: ``bias_lang`` and ``bias0`` at twice the lr and without weight decay."""
    model = MODELS.get(MODEL)()
    method = build_method("linear-probe")
    trainable = method.apply(model)
    groups = parameter_groups(model, trainable, method.config, Protocol(bias_lr_factor=2.0))
    for name in ("rpn.head.bias_lang", "rpn.head.bias0", "rpn.head.bbox_pred.bias"):
        [group] = [g for g in groups if any(p is trainable[name] for p in g["params"])]
        assert group["lr"] == pytest.approx(2.0 * method.config.lr) and group["weight_decay"] == 0.0, name
    [weights] = [g for g in groups if any(p is trainable["rpn.head.bbox_pred.weight"] for p in g["params"])]
    assert weights["lr"] == pytest.approx(method.config.lr) and weights["weight_decay"] == method.config.weight_decay
