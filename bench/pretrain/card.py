"""What the pre-trained model can do before any tuning, and the model card that says so.

The card is generated from the same record that is committed next to the weights
(``pretraining.json``), so its numbers cannot drift from what the run measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from bench.catalog import DatasetSpec, open_split, require_data
from bench.models.base import DetectorBase
from bench.train.evaluate import evaluate, evaluation_dataset

RECORD_FILE = "pretraining.json"
CARD_FILE = "MODEL_CARD.md"


def split_ap(model: DetectorBase, specs: Sequence[DatasetSpec], cache_dir: Path | None, *, split: str = "test",
             batch_size: int = 8) -> dict[str, float]:
    """COCO AP in percent (two decimals) of ``model`` as it is on ``split`` of each dataset."""
    require_data(specs, None, cache_root=cache_dir)
    model.eval()
    scores = {}
    for spec in specs:
        dataset = evaluation_dataset(open_split(spec, split, None, cache_root=cache_dir), model)
        scores[spec.name] = round(100 * evaluate(model, dataset, spec, batch_size=batch_size).metrics["AP"], 2)
    return scores


def _table(scores: dict[str, float]) -> str:
    rows = [f"| {name} | {ap:.1f} |" for name, ap in scores.items()]
    mean = sum(scores.values()) / len(scores)
    return "\n".join(["| dataset | AP (%) |", "|---|---|", *rows, f"| **mean** | **{mean:.1f}** |"])


def write_card(out_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``pretraining.json`` (the record) and ``MODEL_CARD.md`` (the same facts, for people)."""
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    path = out_dir / CARD_FILE
    path.write_text(render_card(record), encoding="utf-8")
    return path


def render_card(record: dict[str, Any]) -> str:
    """The model card's markdown for a pre-training record."""
    config = record["config"]
    first, last = record["loss_log"][0], record["loss_log"][-1]
    return f"""# glip-nano model card

A GLIP of {record["parameters"] / 1e6:.2f}M parameters (`bench/models/glip/config.py` `GLIP_NANO`: the
GLIP-T code with every dimension reduced and plain instead of deformable DyHead convolutions),
pre-trained from random initialisation on the synthetic shapes world. It exists so that tuning
methods can be compared on a CPU in minutes; it says nothing about real images.

## How it was made

    {record["command"]}

- Corpus: the `{record["corpus"]}` suite (`datasets/shapes-pretrain.yaml`): 6 base shapes, 6 base
  colours and 2 size words on plain and noisy backgrounds, named in three schemes (shape, colour +
  shape, size + shape). Each caption lists the phrases present in the image plus absent phrases of
  the same scheme, as GLIP's detection-as-grounding data does.
- Training: every parameter, AdamW (lr {config["lr"]}, weight decay {config["weight_decay"]}), {config["warmup_steps"]}
  warm-up steps then cosine decay, batch {config["batch_size"]}, {config["steps"]} steps, gradient-norm
  clip {config["clip_grad_norm"]}, seed {config["seed"]}.
- Took {record["train_seconds"] / 60:.1f} min on {record["device"]} with {record["threads"]} threads
  (torch {record["torch"]}). Loss {first["loss"]:.3f} over the first {first["step"]} steps, {last["loss"]:.3f}
  over the last {config["log_every"]}.
- Weights: `glip-nano.safetensors` (sha256 `{record["weights_sha256"][:16]}...`); tokenizer: `vocab.txt`
  (see README.md: held-out words are not whole tokens).

## What it can do before tuning

Zero-shot AP on the test split of each `{record["downstream"]}` dataset (shifts the corpus never
showed: new colour and shape words, greyscale, dense small objects, clutter, new backgrounds):

{_table(record["zero_shot_test_ap"])}

On held-out test images of its own corpus:

{_table(record["corpus_test_ap"])}
"""
