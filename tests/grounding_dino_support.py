"""A tiny Grounding DINO and a WordPiece tokenizer for it, built offline in seconds.

The tokenizer's vocabulary puts ``[PAD]``, ``[CLS]``, ``[SEP]``, ``.`` and ``?`` at the ids of
bert-base-uncased (0, 101, 102, 1012, 1029), which Grounding DINO hard-codes; the backbone is given as
a config object, so nothing is fetched from the hub. Dropout is off so that tests are deterministic.

A randomly initialised detector is far from any detector a method would tune (its token logits
saturate and the focal loss is in the hundreds), so :func:`warmed_up_weights` first trains it fully
on a small fixed task, as the GLIP contract tests start from fixture A's trained weights. Its fusion
layers start with layer scales of :data:`FUSION_LAYER_SCALE` instead of ``transformers``' 1e-4, which
a few warm-up steps would barely move: fusion then matters as it does in a trained detector.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from transformers import AutoTokenizer, BertConfig, PretrainedConfig, SwinConfig

from bench.data.prompts import Prompt, PromptClass, build_prompt
from bench.data.transforms import PixelNormalization, pad_batch
from bench.models.base import InputSpec
from bench.models.grounding_dino.config import FAMILY_CONFIGS
from bench.models.grounding_dino.model import GroundingDino, grounding_dino_on_config

WORDS = (
    "red green blue yellow purple orange cyan grey white black square circle triangle star cross ring "
    "hexagon small large big shape shapes object a an the of on in with"
).split()
# Sizes of the synthetic shapes images, so that training and evaluation stay CPU-sized.
TINY_INPUTS = InputSpec(
    pixels=PixelNormalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    min_sizes_train=(80, 96, 112), max_size_train=192, min_size_test=96, max_size_test=192, size_divisibility=32,
)
SPECIAL_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}


def tiny_tokenizer(directory: Path):
    """A fast BERT tokenizer whose files are written to ``directory`` (as a from_pretrained folder)."""
    vocab = [SPECIAL_IDS.get(i, f"[unused{i}]") for i in range(1030)]
    vocab += WORDS + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase + string.digits] + list(string.digits)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"do_lower_case": True, "model_max_length": 64, "tokenizer_class": "BertTokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)


def tiny_config(vocab_size: int, family: str = "grounding-dino") -> PretrainedConfig:
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                      out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"], drop_path_rate=0.0)
    bert = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return FAMILY_CONFIGS[family](
        backbone_config=swin, text_config=bert, num_queries=20, encoder_layers=2, decoder_layers=2, d_model=32,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, max_text_len=64,
        dropout=0.0, fusion_droppath=0.0,
    )


SHAPE_CLASSES = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]
WARM_UP_STEPS = 30
FUSION_LAYER_SCALE = 0.1


def tiny_task(model: GroundingDino) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]], Prompt]:
    """One seeded 64x96 image with two boxes, padded as a batch, its targets and the three-class prompt."""
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[8.0, 6.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1, 3])}]
    prompt = build_prompt(SHAPE_CLASSES, model.tokenizer, style=model.prompt_style, max_query_len=model.text_slots)
    images, sizes = pad_batch([image], model.input_spec.size_divisibility)
    return images, sizes, targets, prompt


def warmed_up_weights(tokenizer, family: str = "grounding-dino") -> dict[str, torch.Tensor]:
    """State of a seeded tiny model of ``family`` after ``WARM_UP_STEPS`` full-training steps on :func:`tiny_task`."""
    torch.manual_seed(0)
    model = grounding_dino_on_config(tiny_config(len(tokenizer), family), tokenizer, TINY_INPUTS)
    for layer in model.hf.model.encoder.layers:
        torch.nn.init.constant_(layer.fusion_layer.vision_param, FUSION_LAYER_SCALE)
        torch.nn.init.constant_(layer.fusion_layer.text_param, FUSION_LAYER_SCALE)
    images, sizes, targets, prompt = tiny_task(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    for _ in range(WARM_UP_STEPS):
        optimizer.zero_grad(set_to_none=True)
        sum(model(images, sizes, prompt, targets).values()).backward()
        optimizer.step()
    return model.state_dict()
