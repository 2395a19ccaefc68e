"""The README's table of methods: every registered method once, in a declared family, with the kinds
of its defaults' sources and its counts on full-size GLIP-T (meta device)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import pytest

from bench.tuning.base import FAMILIES, METHODS, Method, MethodConfig, register_method
from bench.tuning.method_table import defaults_summary, main, method_table


@dataclass(frozen=True)
class _Config(MethodConfig):
    lr: float = 1e-2
    rank: int = 4
    scale: float = 2.0
    sources = MappingProxyType({
        "lr": "ours: one rate for the family",
        "rank": "paper: Someone et al. 2024, Table 3",
        "scale": "official code: someone/repo train.py",
    })


def test_defaults_summary_counts_the_kinds_of_the_declared_sources():
    # weight_decay keeps MethodConfig's source (official code), so 3 options besides lr
    assert defaults_summary(_Config) == "lr 0.01 (ours); 3 options: 2 official code, 1 paper"
    assert defaults_summary(MethodConfig) == "lr 0.0001 (official code); 1 option: 1 official code"


def test_a_method_must_declare_a_known_family():
    with pytest.raises(ValueError, match="family 'prompts' is not one of none, all weights"):
        register_method("made-up", _Config, "a method of no known family", family="prompts")(type("MadeUp", (Method,), {}))
    assert "made-up" not in METHODS.names()


def test_every_registered_method_has_one_row_in_its_family_with_its_glip_t_counts(capsys):
    METHODS.get("coop+vpt")  # a composition made on demand (as by an earlier test or command) has no row
    table = method_table("glip-t").set_index("method")
    declared = [entry.name for entry in METHODS.declared()]
    assert "coop+vpt" in METHODS and "coop+vpt" not in declared and {"sdpt+lora", "dual-prompt"} <= set(declared)
    assert list(table.index) == sorted(declared, key=lambda name: (list(FAMILIES).index(table.at[name, "family"]), name))
    assert set(table["family"]) <= set(FAMILIES) and {"none", "adapters", "low-rank updates", "composition"} <= set(table["family"])
    # GLIP-T: SDPT's 100 tokens of width 2048 in each of 6 fusion layers, of which K * v_dim (256) act per layer
    assert table.at["sdpt", "allocated (glip-t)"] == 100 * 2048 * 6 and table.at["sdpt", "effective (glip-t)"] == 100 * 256 * 6
    assert table.at["zero-shot", "allocated (glip-t)"] == 0 and table.at["zero-shot", "defaults"] == "nothing to set"
    assert table.at["lora", "defaults"].startswith("lr 0.001 (ours)") and table.at["full", "defaults"].startswith("lr 0.0001 (official code)")
    assert main(["--model", "glip-t", "--format", "markdown"]) == 0
    printed = capsys.readouterr().out
    assert "| sdpt " in printed and "1,228,800" in printed
