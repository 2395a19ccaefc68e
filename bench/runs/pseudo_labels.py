"""Self-training: every method tunes on a teacher's pseudo-labels and is scored on the real test labels.

The SDPT paper reports its prompts robust "in few-shot and self-training scenarios"; its official
code trains on pseudo-labels written over the training annotations (its ``train_label`` option,
wuyongjianCODE/SDPT). Here that is a protocol setting (``training_labels: pseudo``): before any cell,
the teacher (the sweep's pre-trained base, zero-shot, or a stored tuned state of it,
``pseudo_label_teacher``) detects on each dataset's training images, detections scoring at least
``pseudo_label_threshold`` become the training annotations, and the file is cached under
``RESULTS/runs/pseudo-labels/`` by what it depends on. Its content digest joins the dataset's
fingerprint, so it is part of every run key that trains on it. Validation and test keep their real
labels (model selection needs some ground truth; a user without it sets ``selection: last``).
The file's precision and recall against the real training labels (IoU 0.5, same class) are stored
with it and in every record that used it (``provenance.pseudo_labels``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision.ops import box_iou

from bench.catalog import DatasetSpec, load_split_annotations, open_split
from bench.data.coco_format import CocoAnnotations, load_coco
from bench.devices import pick_device
from bench.errors import BenchError
from bench.eval.coco_eval import detections_to_records
from bench.files import write_atomically
from bench.runs.captions import with_fitting_captions
from bench.runs.fingerprint import FingerprintCache, dataset_fingerprint, file_sha256, weights_fingerprint
from bench.runs.warm import base_model
from bench.train.evaluate import detect_split, evaluation_dataset, vocabulary_prompts
from bench.train.protocol import Protocol
from bench.tuning.state import RUN_METADATA, load_tuned, tuned_metadata

if TYPE_CHECKING:  # the planner calls this module, so the context is only a type here
    from bench.runs.plan import RunContext

PSEUDO_LABELS = "pseudo"  # the protocol's training_labels for this scenario
ZERO_SHOT_TEACHER = "zero-shot"
MATCH_IOU = 0.5
FOLDER = "pseudo-labels"


def teacher_digest(teacher: str) -> str:
    """What the teacher is, for the cache key: ``zero-shot``, or the content digest of a tuned state."""
    if teacher == ZERO_SHOT_TEACHER:
        return teacher
    path = Path(teacher)
    if not path.is_file():
        raise BenchError(f"pseudo_label_teacher {teacher!r} is neither 'zero-shot' nor a file: pass a cell's "
                         "selected.safetensors (RESULTS/runs/work/<run key>/) or leave the default, zero-shot.")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def pseudo_label_file(dataset: DatasetSpec, model: str, weights: str | None, protocol: Protocol,
                      context: RunContext, *, make: bool = True) -> Path:
    """The pseudo-label file of ``dataset``'s training split for this base, teacher and threshold, made
    now (on the sweep's ``--device``) when ``make`` and it is not there yet; cached by what it depends
    on (the dataset's and the weights' content fingerprints, the teacher's, the threshold)."""
    data_root, cache_dir = context.data_root, context.cache_dir
    digests = FingerprintCache(context.store.fingerprints_path)
    data = dataset_fingerprint(dataset, {s: dataset.split_paths(s, data_root, cache_dir)[1] for s in dataset.splits}, digests)
    base = weights_fingerprint(weights, digests)
    digests.save()
    key = hashlib.sha256(json.dumps([data, model, base, teacher_digest(protocol.pseudo_label_teacher),
                                     protocol.pseudo_label_threshold]).encode()).hexdigest()[:20]
    path = context.store.root / FOLDER / f"{dataset.name}-{key}.json"
    if path.is_file():
        return path
    if not make:
        raise BenchError(f"The pseudo-labels of {dataset.name} ({path}) are missing: the sweep makes them before its first "
                         "cell. Run the sweep command again.")
    print(f"{dataset.name}: pseudo-labelling its training images with the {protocol.pseudo_label_teacher} teacher "
          f"(score >= {protocol.pseudo_label_threshold:g}) ...", flush=True)
    real = load_split_annotations(dataset, "train", data_root, cache_dir)
    detector = base_model(model, context.model_inputs(weights))
    if protocol.pseudo_label_teacher != ZERO_SHOT_TEACHER:
        _check_teacher(protocol.pseudo_label_teacher, base)
        load_tuned(Path(protocol.pseudo_label_teacher), detector)
    detector.to(pick_device(context.device))
    images = open_split(dataset, "train", data_root, cache_root=cache_dir)
    spec = with_fitting_captions(dataset, images, detector)
    split = evaluation_dataset(images, detector)
    with torch.no_grad():
        found = detect_split(detector, split, vocabulary_prompts(detector, split, spec), batch_size=protocol.eval_batch_size,
                             detections_per_image=spec.detections_per_image, progress="pseudo-labels" if context.progress else None)
    kept = [r for r in detections_to_records(real.data, found) if r["score"] >= protocol.pseudo_label_threshold]
    annotations = [{"id": i, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
                    "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for i, r in enumerate(kept, start=1)]
    quality = label_quality(real, annotations)
    payload = {**real.data, "annotations": annotations,
               "info": {"pseudo_labels": {"teacher": protocol.pseudo_label_teacher, "threshold": protocol.pseudo_label_threshold,
                                          **quality}}}
    write_atomically(path, json.dumps(payload).encode())
    print(f"{dataset.name}: {len(annotations)} pseudo-labels, precision {quality['precision']:.3f}, recall "
          f"{quality['recall']:.3f} against the real training labels ({path}).", flush=True)
    return path


def label_quality(real: CocoAnnotations, pseudo: list[dict]) -> dict[str, float]:
    """Precision and recall of ``pseudo`` boxes against the real ones: a pseudo box is right when it
    overlaps an unmatched real box of its class by IoU >= 0.5 (greedy, in file order)."""
    real_boxes = [a for a in real.data["annotations"] if not a.get("iscrowd")]
    matched = 0
    for image_id in real.images:
        for category in {a["category_id"] for a in pseudo if a["image_id"] == image_id}:
            truth = [a["bbox"] for a in real_boxes if a["image_id"] == image_id and a["category_id"] == category]
            guesses = [a["bbox"] for a in pseudo if a["image_id"] == image_id and a["category_id"] == category]
            if not truth:
                continue
            iou = box_iou(_xyxy(guesses), _xyxy(truth))
            free = torch.ones(len(truth), dtype=torch.bool)
            for row in iou:
                candidates = torch.where(free & (row >= MATCH_IOU))[0]
                if len(candidates):
                    free[candidates[row[candidates].argmax()]] = False
                    matched += 1
    return {"boxes": len(pseudo), "real_boxes": len(real_boxes),
            "precision": matched / len(pseudo) if pseudo else 0.0,
            "recall": matched / len(real_boxes) if real_boxes else 0.0}


def pseudo_annotations(path: Path) -> CocoAnnotations:
    """The pseudo-labelled training annotations stored at ``path``."""
    return load_coco(path)


def provenance_of(path: Path) -> dict:
    """What a record keeps of the pseudo-labels it trained on: the file, its digest, and what the file
    says of itself (teacher, threshold, boxes, precision and recall against the real labels)."""
    return {"file": str(path), "sha256": file_sha256(path), **json.loads(path.read_text())["info"]["pseudo_labels"]}


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    xywh = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)


def _check_teacher(path: str, weights_fingerprint: str | None) -> None:
    metadata = tuned_metadata(Path(path))
    if any(name not in metadata for name in RUN_METADATA) or metadata["base_fingerprint"] != (weights_fingerprint or ""):
        raise BenchError(f"The teacher {path} was not tuned on this sweep's base weights (its base fingerprint "
                         f"{metadata.get('base_fingerprint')!r}, the sweep's {weights_fingerprint!r}): a teacher must be a "
                         "cell's selected.safetensors on the same base.")
