"""Check this GLIP against tensors produced by the official GLIP code.

    python -m bench.models.glip.parity FIXTURE_DIR [--attention sdpa]

A fixture directory (format: tests/fixtures/README.md) holds an official-format checkpoint of some
configuration (``reduced_config.json``, ``bert_local/``), input images, and the official outputs of
every stage in ``reference.pt``. The command rebuilds the model from the description, loads the
checkpoint strictly, runs every stage on the same inputs and prints one line per compared tensor with
its largest absolute and relative difference and PASS/FAIL against the tolerances below. It exits
with status 0 only if every line passes.

As the fixture notes advise, the model is fed the official padded batch (``input.images_padded``),
so that differences between resize libraries show up only in the pre-processing lines. Its text is
padded to all text slots as the official run's was (``GLIP.pad_text_to_slots``), so that the text
tensors compare slot for slot. ``--attention sdpa`` checks the fused attention kernels
(:meth:`GLIP.set_attention_kernel`) against the same official tensors and tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from bench.data.prompts import PromptClass, build_prompt
from bench.models.base import ATTENTION_KERNELS
from bench.data.transforms import boxes_to_original, eval_transform, pad_batch
from bench.errors import BenchError
from bench.models.glip.anchors import grid_anchors
from bench.models.glip.atss_assignment import ImageTargets
from bench.models.glip.atss_loss import atss_losses
from bench.models.glip.checkpoint import load_official_checkpoint
from bench.models.glip.config import from_reduced_config
from bench.models.glip.language import load_tokenizer
from bench.models.glip.model import GLIP
from bench.models.glip.postprocess import postprocess
from bench.models.glip.text_features import TextFeatures


@dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|ours - official| <= atol + rtol * |official|`` (``torch.allclose`` semantics)."""

    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol {self.atol:g} rtol {self.rtol:g}"


# Set above the differences between reruns of the official code (tests/fixtures/README.md).
FEATURES = Tolerance(1e-4, 1e-4)
BOXES = Tolerance(1e-3, 0.0)
SCORES = Tolerance(1e-5, 0.0)
LOSSES = Tolerance(0.0, 1e-5)
GRADS = Tolerance(1e-6, 1e-4)
EXACT = Tolerance(0.0, 0.0)


@dataclass(frozen=True)
class StageResult:
    """One compared tensor."""

    name: str
    passed: bool
    max_abs: float
    max_rel: float
    tolerance: Tolerance
    note: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        note = f"  {self.note}" if self.note else ""
        return f"{verdict}  {self.name:<60} max_abs {self.max_abs:.3e}  max_rel {self.max_rel:.3e}  ({self.tolerance}){note}"


def compare(name: str, ours: torch.Tensor, official: torch.Tensor, tolerance: Tolerance) -> StageResult:
    ours, official = ours.detach().cpu(), official.detach().cpu()
    if ours.shape != official.shape:
        return StageResult(name, False, float("inf"), float("inf"), tolerance, f"shape {tuple(ours.shape)} vs official {tuple(official.shape)}")
    if ours.numel() == 0:
        return StageResult(name, True, 0.0, 0.0, tolerance)
    ours64, official64 = ours.double(), official.double()
    diff = (ours64 - official64).abs()
    rel = diff / official64.abs().clamp_min(1e-12)
    passed = bool((diff <= tolerance.atol + tolerance.rtol * official64.abs()).all())
    return StageResult(name, passed, float(diff.max()), float(rel.max()), tolerance)


def failure(name: str, note: str) -> StageResult:
    return StageResult(name, False, float("inf"), float("inf"), EXACT, note)


class Fixture:
    """A fixture directory: configuration, checkpoint, images, summary and reference tensors."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        required = ["reduced_config.json", "summary.json", "reference.pt", "bert_local"]
        missing = [name for name in required if not (self.dir / name).exists()]
        checkpoints = sorted(self.dir.glob("*.pth"))
        if missing or len(checkpoints) != 1:
            raise BenchError(
                f"{self.dir} is not a parity fixture: it needs {', '.join(required)} and exactly one *.pth "
                f"checkpoint (missing: {missing or 'none'}; checkpoints found: {len(checkpoints)})."
            )
        self.checkpoint = checkpoints[0]
        self.summary = json.loads((self.dir / "summary.json").read_text())
        self.reference: dict[str, torch.Tensor] = torch.load(self.dir / "reference.pt", weights_only=True)
        self.config = from_reduced_config(self.dir / "reduced_config.json", self.dir / "bert_local" / "config.json")
        self.tokenizer = load_tokenizer(self.dir / "bert_local")

    @property
    def batch_size(self) -> int:
        return int(self.reference["input.images_padded"].shape[0])

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.reference if k.startswith(prefix)]


def fixture_prompt(fixture: Fixture):
    """The detection prompt of the fixture: its query's class names, labelled 1..N in order."""
    names = fixture.summary["query"].split(". ")
    return build_prompt([PromptClass(i, name) for i, name in enumerate(names, start=1)], fixture.tokenizer)


def check_prompt(fixture: Fixture, prompt) -> Iterator[StageResult]:
    official = {int(k): v for k, v in fixture.summary["positive_map_label_to_token"].items()}
    yield StageResult("prompt.caption", prompt.caption == fixture.summary["query"], 0.0, 0.0, EXACT)
    ids = torch.tensor(fixture.tokenizer(prompt.caption)["input_ids"])
    yield compare("prompt.input_ids", ids, torch.tensor(fixture.summary["query_input_ids"]), EXACT)
    yield StageResult("prompt.positive_map_label_to_token", prompt.label_to_tokens == official, 0.0, 0.0, EXACT)


def check_preprocessing(fixture: Fixture) -> Iterator[StageResult]:
    transform = eval_transform(fixture.config.input.pixels, fixture.config.input.min_size_test, fixture.config.input.max_size_test)
    images = []
    for i, entry in enumerate(fixture.summary["images"]):
        image, _ = transform(Image.open(fixture.dir / entry["file"]).convert("RGB"), {})
        images.append(image)
        yield compare(f"input.image{i}_preprocessed", image, fixture.reference[f"input.image{i}_preprocessed"], FEATURES)
    batch, sizes = pad_batch(images, fixture.config.input.size_divisibility)
    yield compare("input.images_padded", batch, fixture.reference["input.images_padded"], FEATURES)
    yield compare("input.image_sizes_hw", sizes, fixture.reference["input.image_sizes_hw"], EXACT)


def check_eval(fixture: Fixture, model: GLIP, prompt) -> Iterator[StageResult]:
    ref = fixture.reference
    images, sizes = ref["input.images_padded"], ref["input.image_sizes_hw"]
    prompts = [prompt] * fixture.batch_size
    with torch.no_grad():
        text = model.encode_text(prompts)
        yield compare("eval.lang_input_ids", text.input_ids, ref["eval.lang_input_ids"], EXACT)
        yield compare("eval.lang.masks", text.features.mask, ref["eval.lang.masks"], EXACT)
        yield compare("eval.lang.hidden", text.features.hidden, ref["eval.lang.hidden"], FEATURES)
        features = model.backbone.features(images)
        for i, stage in enumerate(features.stages):
            yield compare(f"eval.backbone.body.stage{i + 2}", stage, ref[f"eval.backbone.body.stage{i + 2}"], FEATURES)
        for level, feature in enumerate(features.pyramid):
            yield compare(f"eval.backbone.fpn.P{level + 3}", feature, ref[f"eval.backbone.fpn.P{level + 3}"], FEATURES)
        steps = model.rpn.head.dyhead_tower.forward_steps(features.pyramid, text.features)
        for step in steps:
            prefix = f"eval.tower.{step.index}.{step.name}"
            for level, visual in enumerate(step.visual):
                yield compare(f"{prefix}.visual.{level}", visual, ref[f"{prefix}.visual.{level}"], FEATURES)
            yield compare(f"{prefix}.lang_hidden", step.text.hidden, ref[f"{prefix}.lang_hidden"], FEATURES)
        outputs = model.rpn.head.predict(steps[-1].visual, steps[-1].text.hidden)
        for level in range(len(outputs.bbox_reg)):
            yield compare(f"eval.head.dot_product_logits.{level}", outputs.dot_product_logits[level], ref[f"eval.head.dot_product_logits.{level}"], FEATURES)
            yield compare(f"eval.head.bbox_reg.{level}", outputs.bbox_reg[level], ref[f"eval.head.bbox_reg.{level}"], FEATURES)
            yield compare(f"eval.head.centerness.{level}", outputs.centerness[level], ref[f"eval.head.centerness.{level}"], FEATURES)
        anchors = grid_anchors(outputs.feature_sizes, fixture.config.anchors)
        for b in range(fixture.batch_size):
            for level, level_anchors in enumerate(anchors):
                yield compare(f"eval.anchors.img{b}.{level}", level_anchors, ref[f"eval.anchors.img{b}.{level}"], EXACT)
        detections = postprocess(outputs, anchors, sizes, prompt.label_to_tokens, fixture.config.inference)
        # End to end through GLIP.forward as well: the assembled model must give the same detections.
        end_to_end = model(images, sizes, prompt)
    for b, (found, whole) in enumerate(zip(detections, end_to_end)):
        yield from check_detections(fixture, b, found, "")
        yield from check_detections(fixture, b, whole, " (GLIP.forward)")


def check_detections(fixture: Fixture, b: int, found, label: str) -> Iterator[StageResult]:
    ref = fixture.reference
    official_scores = ref[f"eval.det{b}.scores"]
    if len(found.scores) != len(official_scores):
        yield failure(f"eval.det{b}.count{label}", f"{len(found.scores)} detections vs official {len(official_scores)}")
        return
    ours_order = found.scores.argsort(descending=True, stable=True)
    official_order = official_scores.argsort(descending=True, stable=True)
    yield compare(f"eval.det{b}.scores{label}", found.scores[ours_order], official_scores[official_order], SCORES)
    yield compare(f"eval.det{b}.labels{label}", found.labels[ours_order], ref[f"eval.det{b}.labels"][official_order], EXACT)
    boxes = found.boxes[ours_order]
    yield compare(f"eval.det{b}.boxes_resized_xyxy{label}", boxes, ref[f"eval.det{b}.boxes_resized_xyxy"][official_order], BOXES)
    resized = ref["input.image_sizes_hw"][b].tolist()
    original = ref["input.orig_sizes_wh"][b].tolist()[::-1]
    yield compare(
        f"eval.det{b}.boxes_orig_xyxy{label}", boxes_to_original(boxes, resized, original), ref[f"eval.det{b}.boxes_orig_xyxy"][official_order], BOXES
    )


def check_train(fixture: Fixture, model: GLIP, prompt) -> Iterator[StageResult]:
    ref = fixture.reference
    images, sizes = ref["input.images_padded"], ref["input.image_sizes_hw"]
    targets = [
        {"boxes": ref[f"train.target{b}.boxes_resized_xyxy"], "labels": ref[f"train.target{b}.labels"]} for b in range(fixture.batch_size)
    ]
    positive_map = torch.cat([prompt.token_map(t["labels"], fixture.config.text.max_query_len) for t in targets])
    yield compare("train.positive_map", positive_map, ref["train.positive_map"], EXACT)
    model.train()
    model.zero_grad(set_to_none=True)
    prompts = [prompt] * fixture.batch_size
    features = model.backbone(images)
    text = model.encode_text(prompts)
    outputs, _ = model.predict(features, text.features)
    anchors = grid_anchors(outputs.feature_sizes, fixture.config.anchors)
    image_targets = [
        ImageTargets(t["boxes"], t["labels"], prompt.token_map(t["labels"], fixture.config.text.max_query_len)) for t in targets
    ]
    losses, assignments = atss_losses(outputs, anchors, image_targets, text.features.mask, fixture.config.loss)
    for key in fixture.keys("train.head."):
        kind, level = key.split(".")[-2], int(key.split(".")[-1])
        yield compare(key, getattr(outputs, kind)[level], ref[key], FEATURES)
    for b, assignment in enumerate(assignments):
        yield compare(f"train.atss.img{b}.labels_per_anchor", assignment.labels, ref[f"train.atss.img{b}.labels_per_anchor"], EXACT)
        yield compare(f"train.atss.img{b}.reg_targets", assignment.reg_targets, ref[f"train.atss.img{b}.reg_targets"], FEATURES)
        rows = assignment.token_labels[assignment.positive]
        yield compare(f"train.atss.img{b}.token_labels_pos_rows", rows, ref[f"train.atss.img{b}.token_labels_pos_rows"], EXACT)
    for name, value in losses.items():
        yield compare(f"train.loss.{name}", value, ref[f"train.loss.{name}"], LOSSES)
    sum(losses.values()).backward()
    parameters = dict(model.named_parameters())
    for key in fixture.keys("train.grad."):
        name = key[len("train.grad.") :]
        grad = parameters[name].grad
        if grad is None:
            yield failure(key, "no gradient reached this parameter")
        else:
            yield compare(key, grad, ref[key], GRADS)
    model.eval()


def run_parity(directory: str | Path, attention: str = "eager") -> list[StageResult]:
    """Every comparison for one fixture directory, in pipeline order, with ``attention`` kernels."""
    fixture = Fixture(directory)
    model = GLIP(fixture.config, fixture.tokenizer)
    load_official_checkpoint(model, fixture.checkpoint)
    model.set_attention_kernel(attention)
    model.pad_text_to_slots = True
    model.eval()
    prompt = fixture_prompt(fixture)
    results = [*check_prompt(fixture, prompt), *check_preprocessing(fixture)]
    results += check_eval(fixture, model, prompt)
    results += check_train(fixture, model, prompt)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models.glip.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("fixture_dir", type=Path, help="a parity fixture directory (e.g. tests/fixtures/glip_parity_A)")
    parser.add_argument("--attention", choices=ATTENTION_KERNELS, default="eager",
                        help="attention kernels to check (default: eager, the official computation)")
    args = parser.parse_args(argv)
    try:
        results = run_parity(args.fixture_dir, args.attention)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
