"""The parameter accounting table of full-size models, built on the meta device."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.tuning.accounting_table import accounting_table, main


def test_full_size_counts_follow_each_method_formula_on_both_backends():
    table = accounting_table(["glip-t", "grounding-dino-t"], ["sdpt", "lora", "zero-shot"]).set_index(["model", "method"])
    # GLIP-T: 6 fusion layers of width 2048; Grounding DINO-T: 6 of width 1024 (encoder_ffn_dim / 2).
    assert table.loc[("glip-t", "sdpt"), "allocated"] == 100 * 2048 * 6
    assert table.loc[("grounding-dino-t", "sdpt"), "allocated"] == 100 * 1024 * 6
    # LoRA r=16 on the six projections of each fusion layer, each between widths 256 and 1024.
    assert table.loc[("grounding-dino-t", "lora"), "allocated"] == 6 * 6 * 16 * (256 + 1024)
    # transformers' GroundingDinoForObjectDetection has 172,250,626 parameters; Swin's unused final norm (2 x 768) is dropped.
    assert table.loc[("grounding-dino-t", "zero-shot"), "base"] == 172_250_626 - 2 * 768
    assert table.loc[("grounding-dino-t", "zero-shot"), "allocated"] == 0


def test_models_without_a_full_size_architecture_are_refused(capsys):
    with pytest.raises(BenchError, match="No full-size architecture to account for 'glip-nano'"):
        accounting_table(["glip-nano"], ["sdpt"])
    assert main(["--models", "grounding-dino-t", "--methods", "vpt", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("model,method,base,allocated,effective,head,stored_bytes,percent_of_base")
