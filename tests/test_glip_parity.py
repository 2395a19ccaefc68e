"""The parity command against fixture A, made with the official GLIP code, and its ability to fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench.models.glip.parity import main, run_parity

REPO = Path(__file__).resolve().parents[1]


def test_parity_command_passes_on_fixture_a(fixture_a_dir):
    result = subprocess.run(
        [sys.executable, "-m", "bench.models.glip.parity", str(fixture_a_dir)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-1].endswith("passed, 0 failed")
    stages = {line.split()[1] for line in lines[:-1]}
    for stage in ("input.images_padded", "eval.backbone.body.stage5", "eval.backbone.fpn.P7", "eval.tower.5.DyConv.visual.0",
                  "eval.head.dot_product_logits.4", "eval.anchors.img0.0", "eval.det0.scores", "train.atss.img0.reg_targets",
                  "train.loss.loss_reg", "train.grad.backbone.body.patch_embed.proj.weight"):
        assert stage in stages


def test_parity_fails_when_the_reference_disagrees(fixture_a_dir, tmp_path, capsys):
    tampered = tmp_path / "fixture"
    shutil.copytree(fixture_a_dir, tampered)
    reference = torch.load(tampered / "reference.pt", weights_only=True)
    reference["eval.backbone.fpn.P4"] = reference["eval.backbone.fpn.P4"] + 1e-3
    torch.save(reference, tampered / "reference.pt")
    results = {r.name: r for r in run_parity(tampered)}
    assert not results["eval.backbone.fpn.P4"].passed
    assert results["eval.backbone.fpn.P3"].passed
    assert main([str(tampered)]) == 1
    assert "FAIL  eval.backbone.fpn.P4" in capsys.readouterr().out


def test_a_folder_that_is_not_a_fixture_is_explained(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a parity fixture" in capsys.readouterr().err
