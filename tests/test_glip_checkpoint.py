"""Official-checkpoint loading: strict by construction, readable when it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.models.base import is_slot_tensor
from bench.models.glip.checkpoint import as_official_checkpoint, load_official_checkpoint, read_official_state_dict


class Toy(nn.Module):
    """Official-looking names: a backbone conv, a head linear, and a method slot."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Conv2d(3, width, 1)
        self.rpn = nn.Module()
        self.rpn.head = nn.Linear(width, 2)
        self.token_extension = None


def _save(tmp_path, state, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_official_layout_round_trips(tmp_path):
    source, target = Toy(), Toy()
    path = _save(tmp_path, as_official_checkpoint(source))
    report = load_official_checkpoint(target, path)
    assert report.loaded == 4 and report.ignored == [] and report.left_to_methods == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_ignorable_entries_are_skipped_and_reported(tmp_path):
    checkpoint = as_official_checkpoint(Toy())
    checkpoint["model"]["module.rpn.anchor_generator.cell_anchors.0"] = torch.zeros(1, 4)
    checkpoint["model"]["module.rpn.head.cls_logits.weight"] = torch.zeros(80, 4, 1, 1)
    checkpoint["model"]["module.language_backbone.body.model.embeddings.position_ids"] = torch.arange(8)[None]
    report = load_official_checkpoint(Toy(), _save(tmp_path, checkpoint))
    assert report.ignored == [
        "language_backbone.body.model.embeddings.position_ids",
        "rpn.anchor_generator.cell_anchors.0",
        "rpn.head.cls_logits.weight",
    ]


def test_method_tensors_may_be_missing_from_the_file(tmp_path):
    path = _save(tmp_path, as_official_checkpoint(Toy()))
    tuned = Toy()
    tuned.token_extension = nn.Linear(2, 2)
    report = load_official_checkpoint(tuned, path, is_method_tensor=is_slot_tensor)
    assert report.left_to_methods == ["token_extension.bias", "token_extension.weight"]
    with pytest.raises(BenchError, match=r"2 model tensor\(s\) are not in the file: token_extension.bias"):
        load_official_checkpoint(tuned, path)


def test_mismatched_checkpoint_lists_first_problems_and_the_fix(tmp_path):
    checkpoint = as_official_checkpoint(Toy(width=8))
    checkpoint["model"]["module.rpn.head.extra.weight"] = torch.zeros(1)
    del checkpoint["model"]["module.backbone.body.bias"]
    with pytest.raises(BenchError) as info:
        load_official_checkpoint(Toy(width=4), _save(tmp_path, checkpoint))
    message = str(info.value)
    assert "backbone.body.weight (file (8, 3, 1, 1), model (4, 3, 1, 1))" in message
    assert "1 model tensor(s) are not in the file: backbone.body.bias" in message
    assert "1 file entries match nothing in the model: rpn.head.extra.weight" in message
    assert "--model" in message


def test_plain_state_dict_without_prefix_is_accepted(tmp_path):
    source = Toy()
    state = read_official_state_dict(_save(tmp_path, source.state_dict()))
    assert set(state) == set(source.state_dict())


class Payload:
    """A pickled object: loading it would run code."""


def test_pickled_objects_are_refused_unless_opted_in(tmp_path):
    checkpoint = as_official_checkpoint(Toy())
    checkpoint["extra"] = Payload()
    path = _save(tmp_path, checkpoint)
    with pytest.raises(BenchError, match=r"\(.*Payload\).*--allow-unsafe-checkpoint"):
        read_official_state_dict(path)
    assert "backbone.body.weight" in read_official_state_dict(path, allow_unsafe_pickle=True)


def test_missing_and_corrupt_files_are_explained(tmp_path):
    with pytest.raises(BenchError, match="does not exist.*--weights"):
        read_official_state_dict(tmp_path / "none.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="cannot be read"):
        read_official_state_dict(broken)
    with pytest.raises(BenchError, match="not a GLIP checkpoint"):
        read_official_state_dict(_save(tmp_path, {"model": [1, 2]}, "list.pth"))
