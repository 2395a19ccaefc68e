"""A tiny random Grounding DINO and a WordPiece tokenizer for it, built offline in milliseconds.

The tokenizer's vocabulary puts ``[PAD]``, ``[CLS]``, ``[SEP]``, ``.`` and ``?`` at the ids of
bert-base-uncased (0, 101, 102, 1012, 1029), which Grounding DINO hard-codes; the backbone is given as
a config object, so nothing is fetched from the hub. Dropout is off so that tests are deterministic.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, GroundingDinoConfig, SwinConfig

WORDS = (
    "red green blue yellow purple orange cyan grey white black square circle triangle star cross ring "
    "small large big shape shapes object a an the of on in with"
).split()
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


def tiny_config(vocab_size: int) -> GroundingDinoConfig:
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                      out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"], drop_path_rate=0.0)
    bert = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return GroundingDinoConfig(
        backbone_config=swin, text_config=bert, num_queries=20, encoder_layers=2, decoder_layers=2, d_model=32,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, max_text_len=32,
        dropout=0.0, fusion_droppath=0.0,
    )
